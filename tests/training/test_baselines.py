"""The benchmark's peers: Surprise's predictions reproduced exactly, ALS scored under protocol P."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import baselines
from training.data import Dataset, Split, load_dataset, make_split


@pytest.fixture(scope="module")
def data(synthetic_ml100k: Path) -> tuple[Dataset, Split]:
    ds = load_dataset(synthetic_ml100k)
    return ds, make_split(ds, split="u1", data_dir=synthetic_ml100k)


@pytest.mark.parametrize("kind", ["svd", "svdpp"])
def test_surprise_catalogue_matrix_matches_the_library(
    data: tuple[Dataset, Split], kind: str
) -> None:
    surprise = pytest.importorskip("surprise")
    ds, split = data
    fm = ds.feature_map
    reader = surprise.Reader(rating_scale=(1, 5))
    rows = [
        (int(u), int(i), float(r))
        for u, i, r in zip(split.train.user, split.train.item, split.train.rating, strict=True)
    ]
    trainset = surprise.Dataset.load_from_folds([], reader).construct_trainset(
        [(u, i, r, None) for u, i, r in rows]
    )
    algo = (
        surprise.SVD(random_state=0, n_epochs=3)
        if kind == "svd"
        else surprise.SVDpp(random_state=0, n_epochs=2)
    )
    algo.fit(trainset)
    matrix = baselines._surprise_matrices(
        algo, trainset, n_users=fm.n_users, n_items=fm.n_items, plus_plus=kind == "svdpp"
    )
    rng = np.random.default_rng(0)
    for u, i in zip(
        rng.integers(1, fm.n_users + 1, 30), rng.integers(1, fm.n_items + 1, 30), strict=True
    ):
        expected = algo.predict(int(u), int(i), clip=False).est
        assert matrix[u, i] == pytest.approx(expected, abs=1e-6)


def test_surprise_svd_peer_reports_protocol_p_metrics(data: tuple[Dataset, Split]) -> None:
    pytest.importorskip("surprise")
    ds, split = data
    out = baselines.surprise_model(
        "svd",
        split.train,
        split.test,
        n_users=ds.feature_map.n_users,
        n_items=ds.feature_map.n_items,
    )
    assert 0.3 < out["rmse"] < 1.5
    assert 0.0 <= out["recall@10"] <= 1.0 and out["train_seconds"] > 0


def test_implicit_als_peer_reports_ranking_metrics_only(data: tuple[Dataset, Split]) -> None:
    pytest.importorskip("implicit")
    ds, split = data
    kw = {"n_users": ds.feature_map.n_users, "n_items": ds.feature_map.n_items}
    als = baselines.implicit_als(split.train, split.test, factors=8, iterations=10, **kw)
    pop = baselines.popularity(split.train, split.test, **kw)
    assert np.isnan(als["rmse"])
    assert 0.0 < als["ndcg@10"] <= 1.0
    assert set(als) >= {"recall@10", "ndcg@10", "hr@10", "coverage@10"}
    assert pop["coverage@10"] < als["coverage@10"]
