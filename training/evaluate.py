"""Evaluation protocol P, shared by every report in the project.

Rating: RMSE and MAE over the test pairs, predictions clipped to [1, 5].
Ranking: for every user, all items the user did not rate in training are ranked; the
relevant items are the user's test items rated >= 4. Recall@K = hits / |relevant|,
NDCG@K with binary gains, HR@K = 1 if any hit; each is the mean over users with at least
one relevant test item. Coverage@K is the share of the catalogue that appears in at least
one of those users' top-K lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from contract.ratings import RATING_MAX, RATING_MIN
from training.features import FeatureTables, make_batch
from training.models.base import TwoHeadModel, to_inputs
from training.seen import SeenIndex

if TYPE_CHECKING:
    from training.data import Ratings

log = logging.getLogger(__name__)

RELEVANT_MIN_RATING = 4.0

# users -> scores [len(users), n_items]; column j is item index j + 1.
Scorer = Callable[[np.ndarray], np.ndarray]
# (users, items) -> predicted ratings of those pairs (clipped or not: metrics clip).
PairPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rating_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """RMSE and MAE with predictions clipped to the rating scale."""
    pred = np.clip(np.asarray(pred, dtype=np.float64), RATING_MIN, RATING_MAX)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {truth.shape[0]} ratings")
    if truth.size == 0:
        return {"rmse": float("nan"), "mae": float("nan")}
    err = pred - truth
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def ranking_metrics(
    scorer: Scorer,
    *,
    train: Ratings,
    test: Ratings,
    n_users: int,
    n_items: int,
    k: int = 10,
    chunk: int = 256,
    seen: SeenIndex | None = None,
) -> dict[str, float]:
    """Protocol P ranking metrics of a catalogue scorer.

    `seen` is the index of `train`; callers that rank many times against the same
    training data (the ensemble weight search) pass it to build it once.
    """
    if seen is None:
        seen = SeenIndex.from_ratings(train, n_users=n_users, n_items=n_items)
    rel_mask = test.rating >= RELEVANT_MIN_RATING
    relevant = SeenIndex.build(
        test.user[rel_mask], test.item[rel_mask], n_users=n_users, n_items=n_items
    )
    users = np.flatnonzero(relevant.counts() > 0).astype(np.int64)
    users = users[users > 0]
    if users.size == 0:
        return {
            f"recall@{k}": float("nan"),
            f"ndcg@{k}": float("nan"),
            f"hr@{k}": float("nan"),
            f"coverage@{k}": float("nan"),
            "n_users": 0.0,
        }
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall = np.zeros(users.size)
    ndcg = np.zeros(users.size)
    hit = np.zeros(users.size)
    recommended = np.zeros(n_items + 1, dtype=bool)
    for start in range(0, users.size, chunk):
        block = users[start : start + chunk]
        scores = np.array(scorer(block), dtype=np.float64)  # [b, n_items], a copy
        if scores.shape != (block.size, n_items):
            raise ValueError(f"scorer returned {scores.shape}, expected {(block.size, n_items)}")
        for row, user in enumerate(block):
            scores[row, seen.of(int(user)) - 1] = -np.inf
        # A stable sort breaks ties by item index, so results never depend on sort internals.
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, n_items)] + 1
        for row, user in enumerate(block):
            rel = relevant.of(int(user))
            ranked = top[row][np.isfinite(np.take_along_axis(scores[row], top[row] - 1, axis=0))]
            recommended[ranked] = True
            hits = np.isin(ranked, rel)
            i = start + row
            recall[i] = hits.sum() / rel.size
            idcg = discounts[: min(rel.size, k)].sum()
            ndcg[i] = (discounts[: hits.size] * hits).sum() / idcg
            hit[i] = float(hits.any())
    return {
        f"recall@{k}": float(recall.mean()),
        f"ndcg@{k}": float(ndcg.mean()),
        f"hr@{k}": float(hit.mean()),
        f"coverage@{k}": float(recommended[1:].sum() / n_items),
        "n_users": float(users.size),
    }


def protocol_p(
    predict: PairPredictor | None,
    scorer: Scorer,
    *,
    train: Ratings,
    test: Ratings,
    n_users: int,
    n_items: int,
    k: int = 10,
) -> dict[str, float]:
    """All protocol P metrics of one model on one split: the one evaluation of the project.

    `predict` rates the test pairs (None for a model without a rating head: RMSE and MAE
    are NaN); `scorer` scores the catalogue for ranking. Training, the pipeline (on the
    exported ONNX files) and the benchmarks all measure through here.
    """
    if predict is None:
        out = {"rmse": float("nan"), "mae": float("nan")}
    else:
        out = rating_metrics(predict(test.user, test.item), test.rating)
    out.update(
        ranking_metrics(scorer, train=train, test=test, n_users=n_users, n_items=n_items, k=k)
    )
    return out


@torch.no_grad()
def predict_pairs(
    model: TwoHeadModel,
    tables: FeatureTables,
    users: np.ndarray,
    items: np.ndarray,
    *,
    batch_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """(rating clipped to [1, 5], score) of a model for (user, item) index pairs."""
    was_training = model.training
    model.eval()
    ratings = np.empty(len(users), dtype=np.float32)
    scores = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        rating, score = model(*to_inputs(make_batch(tables, users[sl], items[sl])))
        ratings[sl] = rating.numpy()
        scores[sl] = score.numpy()
    model.train(was_training)
    return ratings, scores


def catalogue_scorer(
    model: TwoHeadModel, tables: FeatureTables, *, n_items: int, batch_size: int = 65536
) -> Scorer:
    """Scores every item 1..n_items for a block of users with any TwoHeadModel.

    Models that expose `score_matrix(users, tables)` (the two-tower score heads of the
    teacher) are scored with one matrix product; others pair every user with every item.
    """
    fast = getattr(model, "score_matrix", None)
    all_items = np.arange(1, n_items + 1, dtype=np.int64)

    def score(users: np.ndarray) -> np.ndarray:
        if fast is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                out = np.asarray(fast(users, tables).numpy())
            model.train(was_training)
            return out[:, 1:]
        u = np.repeat(users, n_items)
        i = np.tile(all_items, users.size)
        _, s = predict_pairs(model, tables, u, i, batch_size=batch_size)
        return s.reshape(users.size, n_items)

    return score


def pair_predictor(model: TwoHeadModel, tables: FeatureTables) -> PairPredictor:
    """The clipped rating head of a PyTorch model as a PairPredictor."""

    def predict(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return predict_pairs(model, tables, users, items)[0]

    return predict


def evaluate_model(
    model: TwoHeadModel,
    tables: FeatureTables,
    *,
    train: Ratings,
    test: Ratings,
    n_users: int,
    n_items: int,
    k: int = 10,
) -> dict[str, float]:
    """All protocol P metrics of one PyTorch model on one split."""
    return protocol_p(
        pair_predictor(model, tables),
        catalogue_scorer(model, tables, n_items=n_items),
        train=train,
        test=test,
        n_users=n_users,
        n_items=n_items,
        k=k,
    )


def popularity_counts(train: Ratings, *, n_items: int) -> np.ndarray:
    """Training interactions per item index 0..n_items (index 0 stays 0)."""
    return np.bincount(train.item, minlength=n_items + 1).astype(np.float64)


def popularity_scorer(train: Ratings, *, n_items: int) -> Scorer:
    counts = popularity_counts(train, n_items=n_items)[1:]

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (users.size, n_items))

    return score


def damped_item_means(train: Ratings, *, n_items: int, damping: float = 5.0) -> np.ndarray:
    """Item mean ratings shrunk towards the global mean; index 0 is the global mean."""
    mu = float(train.rating.mean())
    sums = np.bincount(train.item, weights=train.rating, minlength=n_items + 1)
    counts = np.bincount(train.item, minlength=n_items + 1)
    means = (sums + damping * mu) / (counts + damping)
    means[0] = mu
    return means


def evaluate_popularity(
    train: Ratings, test: Ratings, *, n_users: int, n_items: int, k: int = 10
) -> dict[str, float]:
    """The popularity baseline: ranks by training count, rates by damped item mean."""
    means = damped_item_means(train, n_items=n_items)
    return protocol_p(
        lambda _users, items: means[items],
        popularity_scorer(train, n_items=n_items),
        train=train,
        test=test,
        n_users=n_users,
        n_items=n_items,
        k=k,
    )


def format_table(rows: dict[str, dict[str, Any]], *, columns: list[str]) -> str:
    """A Markdown table of metric rows (one row per model)."""
    head = "| model | " + " | ".join(columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = [head, sep]
    for name, metrics in rows.items():
        cells = []
        for col in columns:
            value = metrics.get(col)
            cells.append(f"{value:.4f}" if isinstance(value, float) else str(value or "-"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
