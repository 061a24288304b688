"""Peers measured next to the teacher under protocol P.

The popularity baseline lives in training.evaluate (every report has it). EASE (Steck
2019) is closed form and needs only numpy. The library peers (scikit-surprise SVD and
SVD++, implicit ALS) are imported lazily: they are only needed by the quality benchmark
(extra `bench`). Peers with hyperparameters are tuned on a validation split carved from
the training data (`tune_on_validation`), never on the test fold.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.sparse import csr_matrix

from training.data import holdout
from training.evaluate import evaluate_popularity, protocol_p, ranking_metrics, rating_metrics

if TYPE_CHECKING:
    from training.data import Ratings

# A peer fitted on (train, test) with some hyperparameters: protocol P metrics on test.
PeerFit = Callable[..., dict[str, float]]

log = logging.getLogger(__name__)


class MissingPeerError(RuntimeError):
    """A peer library is not installed."""


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPeerError(
            f"{package} is not installed; install the benchmark extra: pip install '.[bench]'"
        ) from exc


def popularity(train: Ratings, test: Ratings, *, n_users: int, n_items: int) -> dict[str, float]:
    return evaluate_popularity(train, test, n_users=n_users, n_items=n_items)


def _surprise_matrices(
    algo: Any, trainset: Any, *, n_users: int, n_items: int, plus_plus: bool
) -> np.ndarray:
    """Rating predictions of a fitted Surprise SVD/SVD++ for every (user, item) index.

    Reproduces Surprise's own `estimate` (biases and factors only for known users and
    items), vectorised, so the whole catalogue can be ranked in a second.
    Returns unclipped predictions [n_users+1, n_items+1].
    """
    mu = trainset.global_mean
    factors = algo.pu.shape[1]
    bu = np.zeros(n_users + 1)
    bi = np.zeros(n_items + 1)
    pu = np.zeros((n_users + 1, factors))
    qi = np.zeros((n_items + 1, factors))
    for inner in trainset.all_users():
        raw = int(trainset.to_raw_uid(inner))
        bu[raw] = algo.bu[inner]
        pu[raw] = algo.pu[inner]
        if plus_plus:
            rated = [j for j, _ in trainset.ur[inner]]
            pu[raw] = pu[raw] + algo.yj[rated].sum(axis=0) / np.sqrt(len(rated))
    for inner in trainset.all_items():
        raw = int(trainset.to_raw_iid(inner))
        bi[raw] = algo.bi[inner]
        qi[raw] = algo.qi[inner]
    return np.asarray(mu + bu[:, None] + bi[None, :] + pu @ qi.T)


def surprise_model(
    kind: str, train: Ratings, test: Ratings, *, n_users: int, n_items: int, seed: int = 0
) -> dict[str, float]:
    """scikit-surprise SVD or SVD++ with the library's defaults; ranks by predicted rating."""
    surprise = _require("surprise", "scikit-surprise")
    # Through a file in Surprise's own format rather than a DataFrame: no pandas needed.
    reader = surprise.Reader(line_format="user item rating", sep="\t", rating_scale=(1, 5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.tsv"
        np.savetxt(
            path,
            np.column_stack([train.user, train.item, train.rating]),
            fmt=["%d", "%d", "%g"],
            delimiter="\t",
        )
        trainset = surprise.Dataset.load_from_file(str(path), reader).build_full_trainset()
    algo = (
        surprise.SVD(random_state=seed)
        if kind == "svd"
        else surprise.SVDpp(random_state=seed, cache_ratings=True)
    )
    started = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - started
    pred = _surprise_matrices(
        algo, trainset, n_users=n_users, n_items=n_items, plus_plus=kind == "svdpp"
    )
    out = rating_metrics(pred[test.user, test.item], test.rating)
    out.update(
        ranking_metrics(
            lambda us: pred[us, 1:], train=train, test=test, n_users=n_users, n_items=n_items
        )
    )
    out["train_seconds"] = seconds
    return out


def implicit_als(
    train: Ratings,
    test: Ratings,
    *,
    n_users: int,
    n_items: int,
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 1.0,
    iterations: int = 20,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, float]:
    """implicit's ALS on binary training interactions; ranking metrics only."""
    als_module = _require("implicit.als", "implicit")
    user_items = binary_user_items(train, n_users=n_users, n_items=n_items).astype(np.float32)
    # implicit parallelises itself; a second thread pool inside BLAS only contends with it.
    threadpoolctl = _require("threadpoolctl", "threadpoolctl")
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = als_module.AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
            num_threads=threads,
        )
        started = time.perf_counter()
        model.fit(user_items, show_progress=False)
    seconds = time.perf_counter() - started
    user_f = np.asarray(model.user_factors)
    item_f = np.asarray(model.item_factors)
    out = protocol_p(
        None,
        lambda us: user_f[us] @ item_f[1:].T,
        train=train,
        test=test,
        n_users=n_users,
        n_items=n_items,
    )
    out["train_seconds"] = seconds
    return out


def binary_user_items(train: Ratings, *, n_users: int, n_items: int) -> csr_matrix:
    """Users x items (index 0 of both unused) with 1 where the user rated the item."""
    return csr_matrix(
        (np.ones(len(train), dtype=np.float64), (train.user, train.item)),
        shape=(n_users + 1, n_items + 1),
    )


def ease_weights(x: csr_matrix, *, lam: float) -> np.ndarray:
    """EASE's item-item matrix: B = I - P diag(1/diag(P)), P = (X^T X + lam I)^-1.

    The closed form of min ||X - XB||^2 + lam ||B||^2 subject to diag(B) = 0, so an
    item never recommends itself; items nobody rated get zero rows and columns.
    """
    if lam <= 0:
        raise ValueError(f"EASE needs lambda > 0, got {lam}")
    gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def ease(
    train: Ratings, test: Ratings, *, n_users: int, n_items: int, lam: float = 500.0
) -> dict[str, float]:
    """EASE on binary training interactions, scored X_u B; ranking metrics only."""
    x = binary_user_items(train, n_users=n_users, n_items=n_items)
    started = time.perf_counter()
    b = ease_weights(x, lam=lam)
    seconds = time.perf_counter() - started
    out = protocol_p(
        None,
        lambda us: np.asarray(x[us] @ b)[:, 1:],
        train=train,
        test=test,
        n_users=n_users,
        n_items=n_items,
    )
    out["train_seconds"] = seconds
    return out


def tune_on_validation(
    fit: PeerFit,
    grid: Mapping[str, Sequence[Any]],
    train: Ratings,
    *,
    n_users: int,
    n_items: int,
    fraction: float = 0.1,
    seed: int = 0,
    metric: str = "ndcg@10",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Best hyperparameters of a peer on a validation split of `train` (never the test).

    The split is the teacher's (`holdout` with the same fraction and seed), so teacher and
    peers choose on the same ratings. Every combination of `grid` is fitted on the rest
    and scored on the held-out part by `metric` (higher is better; ties: first in grid
    order). Returns (best, one row per combination with its validation metrics).
    """
    fit_part, valid = holdout(train, fraction=fraction, seed=seed)
    names = list(grid)
    trials: list[dict[str, Any]] = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        metrics = fit(fit_part, valid, n_users=n_users, n_items=n_items, **params)
        trials.append({**params, **{k: metrics[k] for k in ("recall@10", "ndcg@10")}})
        log.info("validation %s: %s", params, {k: round(metrics[k], 4) for k in ("ndcg@10",)})
    best = max(range(len(trials)), key=lambda i: (trials[i][metric], -i))
    return {n: trials[best][n] for n in names}, trials


# Searched on validation: lambda is data-size dependent (hundreds on ML-100k, thousands on
# ML-20M); the grid spans both sides of the usual ML-100k optimum.
EASE_GRID: dict[str, Sequence[Any]] = {"lam": (50, 100, 200, 300, 500, 750, 1000, 1500, 2500)}
# Factors, regularisation and the confidence weight alpha of positives. Searches on the
# validation splits moved the grid twice: reg 0.01..10 x alpha 1..20 peaked at its edge
# (reg 10, alpha 1) on u1; reg 1..100 x alpha 0.5..3 then chose alpha 3, its edge, on 13
# of 15 fold-seeds (reg 30 on most). This grid holds both optima inside.
ALS_GRID: dict[str, Sequence[Any]] = {
    "factors": (16, 32, 64, 128),
    "regularization": (10.0, 30.0, 100.0),
    "alpha": (1.0, 3.0, 10.0),
}
