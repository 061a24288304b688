"""The partition-based ranking against the full stable sort it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import Ratings
from training.evaluate import bounded_users, ranking_metrics, top_k_stable
from training.seen import SeenIndex


def _reference(scores: np.ndarray, *, train: Ratings, test: Ratings, n_users: int, k: int) -> dict:
    """The row-by-row implementation ranking_metrics had before it was vectorised."""
    n_items = scores.shape[1]
    seen = SeenIndex.from_ratings(train, n_users=n_users, n_items=n_items)
    rel_mask = test.rating >= 4.0
    relevant = SeenIndex.build(
        test.user[rel_mask], test.item[rel_mask], n_users=n_users, n_items=n_items
    )
    users = np.flatnonzero(relevant.counts() > 0)
    users = users[users > 0]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg, hit = [], [], []
    recommended = np.zeros(n_items + 1, dtype=bool)
    for user in users:
        row = scores[user].astype(np.float64).copy()
        row[seen.of(int(user)) - 1] = -np.inf
        top = np.argsort(-row, kind="stable")[: min(k, n_items)] + 1
        ranked = top[np.isfinite(row[top - 1])]
        recommended[ranked] = True
        rel = relevant.of(int(user))
        hits = np.isin(ranked, rel)
        recall.append(hits.sum() / rel.size)
        ndcg.append((discounts[: hits.size] * hits).sum() / discounts[: min(rel.size, k)].sum())
        hit.append(float(hits.any()))
    return {
        f"recall@{k}": float(np.mean(recall)),
        f"ndcg@{k}": float(np.mean(ndcg)),
        f"hr@{k}": float(np.mean(hit)),
        f"coverage@{k}": float(recommended[1:].sum() / n_items),
        "n_users": float(users.size),
    }


def _ratings(rng: np.random.Generator, n: int, n_users: int, n_items: int) -> Ratings:
    return Ratings(
        user=rng.integers(1, n_users + 1, size=n).astype(np.int64),
        item=rng.integers(1, n_items + 1, size=n).astype(np.int64),
        rating=rng.integers(1, 6, size=n).astype(np.float32),
        timestamp=np.zeros(n, dtype=np.int64),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_row_by_row_reference_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 25
    train = _ratings(rng, 300, n_users, n_items)  # some users rate most of the catalogue
    test = _ratings(rng, 200, n_users, n_items)
    # Coarse scores: many ties, also at the k-th place.
    scores = rng.integers(0, 4, size=(n_users + 1, n_items)).astype(np.float64)

    def scorer(users: np.ndarray) -> np.ndarray:
        return scores[users]

    got = ranking_metrics(scorer, train=train, test=test, n_users=n_users, n_items=n_items, chunk=7)
    want = _reference(scores, train=train, test=test, n_users=n_users, k=10)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12)


def test_top_k_stable_equals_the_stable_sort() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(50, 40)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0, :] = -np.inf
    for k in (1, 10, 40, 60):
        want = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, 40)]
        np.testing.assert_array_equal(top_k_stable(scores, k), want)


def test_max_users_samples_a_bounded_seeded_subset() -> None:
    rng = np.random.default_rng(4)
    train = _ratings(rng, 300, 60, 20)
    test = _ratings(rng, 400, 60, 20)
    scores = rng.random((61, 20))
    full = ranking_metrics(lambda u: scores[u], train=train, test=test, n_users=60, n_items=20)
    some = ranking_metrics(
        lambda u: scores[u], train=train, test=test, n_users=60, n_items=20, max_users=10
    )
    again = ranking_metrics(
        lambda u: scores[u], train=train, test=test, n_users=60, n_items=20, max_users=10
    )
    assert full["n_users"] > 10 and some["n_users"] == 10
    assert some == again


def test_bounded_users_leaves_small_catalogues_exact() -> None:
    assert bounded_users(1682) > 943  # ml-100k: every user ranked
    assert bounded_users(4000) > 6040  # ML-1M-sized catalogues too
    assert bounded_users(1_000_000) == 500  # a million items: a bounded sample
    assert bounded_users(1_000_000, floor=64) == 64
