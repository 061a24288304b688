"""The benchmark's peers: Surprise reproduced exactly, EASE against hand-computed cases, ALS
and EASE scored under protocol P and tuned on validation only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from training import baselines
from training.data import Dataset, Ratings, Split, load_dataset, make_split


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


def test_ease_weights_match_a_hand_computed_case() -> None:
    # Users x items, item column 0 is the unused padding index.
    # X (items 1, 2) = [[1, 1], [1, 0]], lambda = 1:
    # G = X^T X + I = [[3, 1], [1, 2]], P = G^-1 = [[2, -1], [-1, 3]] / 5,
    # B_ij = -P_ij / P_jj: B_12 = (1/5) / (3/5) = 1/3, B_21 = (1/5) / (2/5) = 1/2.
    # The same as each column's ridge regression on the other: x1.x2 / (x1.x1 + 1) = 1/3
    # and x2.x1 / (x2.x2 + 1) = 1/2.
    x = csr_matrix(np.array([[0, 0, 0], [0, 1, 1], [0, 1, 0]], dtype=np.float64))
    b = baselines.ease_weights(x, lam=1.0)
    expected = np.array([[0, 0, 0], [0, 0, 1 / 3], [0, 1 / 2, 0]])
    np.testing.assert_allclose(b, expected, atol=1e-12)
    # Scores X_u B: user 1 (items 1, 2) gets item 1 <- 1/2 and item 2 <- 1/3.
    np.testing.assert_allclose(np.asarray(x[[1]] @ b)[0, 1:], [1 / 2, 1 / 3], atol=1e-12)
    with pytest.raises(ValueError, match="lambda"):
        baselines.ease_weights(x, lam=0.0)


def test_ease_weights_solve_the_constrained_ridge_problem() -> None:
    # Against the definition, column by column: with diag(B) = 0, column j is the ridge
    # regression of item j's column on the other items' columns.
    rng = np.random.default_rng(0)
    dense = (rng.random((12, 6)) < 0.4).astype(np.float64)
    lam = 2.5
    b = baselines.ease_weights(csr_matrix(dense), lam=lam)
    for j in range(6):
        others = [i for i in range(6) if i != j]
        a = dense[:, others]
        col = np.linalg.solve(a.T @ a + lam * np.eye(5), a.T @ dense[:, j])
        np.testing.assert_allclose(b[others, j], col, atol=1e-10)
        assert b[j, j] == 0.0


def test_ease_peer_ranks_and_is_tuned_on_validation_only(data: tuple[Dataset, Split]) -> None:
    ds, split = data
    kw = {"n_users": ds.feature_map.n_users, "n_items": ds.feature_map.n_items}
    seen: list[int] = []

    def fit(train: Ratings, test: Ratings, **params: Any) -> dict[str, float]:
        seen.append(len(test))
        # The held-out part comes from the training ratings, never the test fold.
        assert len(train) + len(test) == len(split.train)
        return baselines.ease(train, test, **params)

    best, trials = baselines.tune_on_validation(fit, {"lam": (1.0, 10.0, 100.0)}, split.train, **kw)
    assert [t["lam"] for t in trials] == [1.0, 10.0, 100.0]
    assert best["lam"] == max(trials, key=lambda t: t["ndcg@10"])["lam"]
    assert seen == [round(0.1 * len(split.train))] * 3
    out = baselines.ease(split.train, split.test, lam=best["lam"], **kw)
    assert np.isnan(out["rmse"]) and 0.0 < out["ndcg@10"] <= 1.0
    pop = baselines.popularity(split.train, split.test, **kw)
    assert out["coverage@10"] > pop["coverage@10"]


def test_tuning_keeps_the_first_of_tied_settings(data: tuple[Dataset, Split]) -> None:
    ds, split = data
    kw = {"n_users": ds.feature_map.n_users, "n_items": ds.feature_map.n_items}

    def fit(train: Ratings, test: Ratings, **params: Any) -> dict[str, float]:
        return {"recall@10": 0.5, "ndcg@10": 0.5 if params["a"] < 3 else 0.1}

    best, trials = baselines.tune_on_validation(
        fit, {"a": (1, 2, 3), "b": ("x",)}, split.train, **kw
    )
    assert best == {"a": 1, "b": "x"} and len(trials) == 3
