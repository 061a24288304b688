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

from contract.ratings import DEFAULT_RATING_SCALE, RatingScale
from training.device import model_device
from training.features import FeatureTables, make_batch
from training.models.base import TwoHeadModel, to_inputs
from training.seen import SeenIndex

if TYPE_CHECKING:
    from training.data import Ratings

log = logging.getLogger(__name__)

RELEVANT_MIN_RATING = 4.0

# users -> scores [len(users), n_items]; column j is item index j + 1.
Scorer = Callable[[np.ndarray], np.ndarray]
# users -> (items [len(users), k] (1-based), finite [len(users), k]): each user's k best
# items not rated in training, ties to the lower index; `finite` False where fewer than k
# were left.
TopK = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# (users, items) -> predicted ratings of those pairs (clipped or not: metrics clip).
PairPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rating_metrics(
    pred: np.ndarray, truth: np.ndarray, *, scale: RatingScale = DEFAULT_RATING_SCALE
) -> dict[str, float]:
    """RMSE and MAE with predictions clipped to the rating scale."""
    pred = np.clip(np.asarray(pred, dtype=np.float64), *scale)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {truth.shape[0]} ratings")
    if truth.size == 0:
        return {"rmse": float("nan"), "mae": float("nan")}
    err = pred - truth
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


# Scores held at once while ranking (float64 cells): chunks of users shrink as the
# catalogue grows, so a million-item catalogue ranks 16 users at a time, not 256.
SCORE_CELLS_PER_CHUNK = 1 << 24


# Users x items scored by an evaluation that has to stay cheap (every epoch's validation,
# the ensemble weight search): beyond it, a seeded sample of users is ranked instead.
# ml-100k and ML-1M-sized catalogues stay far below it, so their results are exact.
BOUNDED_SCORE_CELLS = 1 << 25
MIN_SAMPLED_USERS = 500


def bounded_users(
    n_items: int, *, cells: int = BOUNDED_SCORE_CELLS, floor: int = MIN_SAMPLED_USERS
) -> int:
    """How many users a bounded evaluation ranks over a catalogue of `n_items`."""
    return max(floor, cells // max(n_items, 1))


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
    max_users: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Protocol P ranking metrics of a catalogue scorer.

    `seen` is the index of `train`; callers that rank many times against the same
    training data pass it to build it once. `max_users` bounds the cost on large data: a
    seeded uniform sample of that many evaluated users (all of them when there are
    fewer), reported in `n_users`.
    """
    index = seen or SeenIndex.from_ratings(train, n_users=n_users, n_items=n_items)

    def top(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array(scorer(block), dtype=np.float64)  # [b, n_items], a copy
        if scores.shape != (block.size, n_items):
            raise ValueError(f"scorer returned {scores.shape}, expected {(block.size, n_items)}")
        return top_unrated(scores, block, index, k)

    chunk = max(1, min(chunk, SCORE_CELLS_PER_CHUNK // max(n_items, 1)))
    return top_k_metrics(
        top,
        test=test,
        n_users=n_users,
        n_items=n_items,
        k=k,
        chunk=chunk,
        max_users=max_users,
        seed=seed,
    )


def top_k_metrics(
    top_of: TopK,
    *,
    test: Ratings,
    n_users: int,
    n_items: int,
    k: int = 10,
    chunk: int = 256,
    max_users: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Protocol P ranking metrics from each user's top-k list, as `top_of` finds it:
    `ranking_metrics` scores the catalogue; the ensemble weight search finds the lists
    among candidates (training/blend_topk.py)."""
    rel_mask = test.rating >= RELEVANT_MIN_RATING
    relevant = SeenIndex.build(
        test.user[rel_mask], test.item[rel_mask], n_users=n_users, n_items=n_items
    )
    users = np.flatnonzero(relevant.counts() > 0).astype(np.int64)
    users = users[users > 0]
    if max_users is not None and users.size > max_users:
        pick = np.random.default_rng(seed).choice(users.size, max_users, replace=False)
        users = np.sort(users[pick])
    if users.size == 0:
        return {
            f"recall@{k}": float("nan"),
            f"ndcg@{k}": float("nan"),
            f"hr@{k}": float("nan"),
            f"coverage@{k}": float("nan"),
            "n_users": 0.0,
        }
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)
    n_rel = relevant.counts()[users]
    hits = np.zeros((users.size, min(k, n_items)), dtype=bool)
    recommended = np.zeros(n_items + 1, dtype=bool)
    for start in range(0, users.size, chunk):
        block = users[start : start + chunk]
        top, finite = top_of(block)
        recommended[top[finite]] = True
        hits[start : start + block.size] = finite & relevant.contains(block[:, None], top)
    n_hits = hits.sum(axis=1)
    ndcg = (hits * discounts[: hits.shape[1]]).sum(axis=1) / ideal[np.minimum(n_rel, k) - 1]
    return {
        f"recall@{k}": float((n_hits / n_rel).mean()),
        f"ndcg@{k}": float(ndcg.mean()),
        f"hr@{k}": float((n_hits > 0).mean()),
        f"coverage@{k}": float(recommended[1:].sum() / n_items),
        "n_users": float(users.size),
    }


def top_unrated(
    scores: np.ndarray, users: np.ndarray, seen: SeenIndex, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(items [b, k] (1-based), finite [b, k]): each row's k best items that `users[row]`
    did not rate, ties to the lower index. `scores` ([b, n_items], column j is item j + 1)
    is changed in place: rated items are set to -inf, so they are never recommended and
    sort last (`finite` False)."""
    rows, items = seen.pairs_of(users)
    scores[rows, items - 1] = -np.inf
    pick = top_k_stable(scores, k)
    return pick + 1, np.isfinite(np.take_along_axis(scores, pick, axis=1))


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, ties broken by the lower index.

    Exactly `np.argsort(-scores, kind="stable")[:, :k]`, at the cost of a partition: a
    full sort of every row was most of the ranking time on large catalogues. Rows with a
    tie at the k-th place (or NaN) take the full sort, so the result never changes.
    """
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    kth = vals.min(axis=1, keepdims=True)
    clean = (scores >= kth).sum(axis=1) == k
    order = np.lexsort((part, -vals), axis=1)  # by score descending, then index
    top = np.take_along_axis(part, order, axis=1)
    messy = np.flatnonzero(~clean)
    if messy.size:
        top[messy] = np.argsort(-scores[messy], axis=1, kind="stable")[:, :k]
    return top


def protocol_p(
    predict: PairPredictor | None,
    scorer: Scorer,
    *,
    train: Ratings,
    test: Ratings,
    n_users: int,
    n_items: int,
    k: int = 10,
    max_users: int | None = None,
    rating_scale: RatingScale = DEFAULT_RATING_SCALE,
) -> dict[str, float]:
    """All protocol P metrics of one model on one split: the one evaluation of the project.

    `predict` rates the test pairs (None for a model without a rating head: RMSE and MAE
    are NaN); `scorer` scores the catalogue for ranking. Training, the pipeline (on the
    exported ONNX files) and the benchmarks all measure through here. `max_users` bounds
    the ranking to a seeded sample of users (large catalogues); rating metrics always
    cover every test pair.
    """
    if predict is None:
        out = {"rmse": float("nan"), "mae": float("nan")}
    else:
        out = rating_metrics(predict(test.user, test.item), test.rating, scale=rating_scale)
    out.update(
        ranking_metrics(
            scorer,
            train=train,
            test=test,
            n_users=n_users,
            n_items=n_items,
            k=k,
            max_users=max_users,
        )
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
    device = model_device(model)
    ratings = np.empty(len(users), dtype=np.float32)
    scores = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        rating, score = model(*to_inputs(make_batch(tables, users[sl], items[sl]), device))
        ratings[sl] = rating.cpu().numpy()
        scores[sl] = score.cpu().numpy()
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
    # Every bundled model has towers; a bare TwoHeadModel (tests, baselines) may not.
    towers = type(model).user_tower is not TwoHeadModel.user_tower
    all_items = np.arange(1, n_items + 1, dtype=np.int64)
    # The item tower does not depend on the user: computed once per scorer, not once per
    # chunk of users (at a million items that was most of the scoring time).
    item_vectors: list[torch.Tensor] = []

    def score(users: np.ndarray) -> np.ndarray:
        if towers:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                if not item_vectors:
                    item_vectors.append(_item_vectors(model, tables))
                device = model_device(model)
                u = model.user_tower(
                    torch.as_tensor(users, dtype=torch.long, device=device),
                    torch.as_tensor(tables.user_feats[users], device=device),
                )
                out = np.asarray((u @ item_vectors[0].T).cpu().numpy())
            model.train(was_training)
            return out[:, 1:]
        if fast is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                out = np.asarray(fast(users, tables).cpu().numpy())
            model.train(was_training)
            return out[:, 1:]
        pair_users = np.repeat(users, n_items)
        pair_items = np.tile(all_items, users.size)
        _, s = predict_pairs(model, tables, pair_users, pair_items, batch_size=batch_size)
        return s.reshape(users.size, n_items)

    return score


def _item_vectors(model: TwoHeadModel, tables: FeatureTables) -> torch.Tensor:
    """Item-tower outputs of every item index 0..n_items: [n_items + 1, D]."""
    device = model_device(model)
    return model.item_tower(
        torch.arange(tables.item_feats.shape[0], device=device),
        torch.as_tensor(tables.item_feats, device=device),
        torch.as_tensor(tables.item_genres, device=device),
    )


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
    max_users: int | None = None,
) -> dict[str, float]:
    """All protocol P metrics of one PyTorch model on one split.

    `max_users` ranks a seeded sample of that many users (see `ranking_metrics`).
    """
    return protocol_p(
        pair_predictor(model, tables),
        catalogue_scorer(model, tables, n_items=n_items),
        train=train,
        test=test,
        n_users=n_users,
        n_items=n_items,
        k=k,
        max_users=max_users,
        rating_scale=model.rating_bounds,
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
