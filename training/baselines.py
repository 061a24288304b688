"""Peers measured next to the teacher under protocol P.

The popularity baseline lives in training.evaluate (every report has it). The library
peers (scikit-surprise SVD and SVD++, implicit ALS) are imported lazily: they are only
needed by the quality benchmark (extra `bench`).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.sparse import csr_matrix

from training.evaluate import evaluate_popularity, ranking_metrics, rating_metrics

if TYPE_CHECKING:
    from training.data import Ratings

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
    iterations: int = 20,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, float]:
    """implicit's ALS on binary training interactions; ranking metrics only."""
    als_module = _require("implicit.als", "implicit")
    user_items = csr_matrix(
        (np.ones(len(train), dtype=np.float32), (train.user, train.item)),
        shape=(n_users + 1, n_items + 1),
    )
    # implicit parallelises itself; a second thread pool inside BLAS only contends with it.
    threadpoolctl = _require("threadpoolctl", "threadpoolctl")
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = als_module.AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            iterations=iterations,
            random_state=seed,
            num_threads=threads,
        )
        started = time.perf_counter()
        model.fit(user_items, show_progress=False)
    seconds = time.perf_counter() - started
    user_f = np.asarray(model.user_factors)
    item_f = np.asarray(model.item_factors)
    out: dict[str, float] = {"rmse": float("nan"), "mae": float("nan")}
    out.update(
        ranking_metrics(
            lambda us: user_f[us] @ item_f[1:].T,
            train=train,
            test=test,
            n_users=n_users,
            n_items=n_items,
        )
    )
    out["train_seconds"] = seconds
    return out
