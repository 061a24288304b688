"""training/blend_topk.py: candidate top-k lists of a blend equal the whole catalogue's."""

from __future__ import annotations

import numpy as np
import pytest

from training.blend_topk import BlendTopK, InMemory, blend
from training.evaluate import top_k_stable
from training.seen import SeenIndex


def catalogue_top(
    mats: np.ndarray, users: np.ndarray, seen: SeenIndex, w: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """What the weight search ranked before: the blend over every item, rated ones out."""
    scores = blend(w, mats[: w.size])  # [U, n_items]
    for row, user in enumerate(users.tolist()):
        scores[row, seen.of(user) - 1] = -np.inf
    pick = top_k_stable(scores, k)
    return pick + 1, np.isfinite(np.take_along_axis(scores, pick, axis=1))


def problem(
    seed: int, *, n_items: int = 300, n_users: int = 12
) -> tuple[np.ndarray, np.ndarray, SeenIndex]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n_users, n_items))
    mats = np.stack([shared + rng.normal(scale=s, size=shared.shape) for s in (0.3, 1, 3, 0.5)])
    # Coarse values: many ties, at the k-th place too.
    mats = np.round(mats * 2) / 2
    users = np.arange(1, n_users + 1)
    rated = [
        rng.choice(n_items, size=n, replace=False) + 1
        for n in rng.integers(0, n_items // 5, n_users)
    ]
    rated[0] = np.arange(1, n_items - 4)  # five items left: fewer than k
    rated[1] = np.arange(1, n_items + 1)  # everything rated
    seen = SeenIndex.build(
        np.repeat(users, [r.size for r in rated]),
        np.concatenate(rated),
        n_users=n_users,
        n_items=n_items,
    )
    return mats, users, seen


@pytest.mark.parametrize("per_matrix", [1, 4, 40, 1000])
def test_candidate_lists_are_the_catalogue_lists(per_matrix: int) -> None:
    mats, users, seen = problem(0)
    lists = BlendTopK(mats, users, seen, k=10, per_matrix=per_matrix)
    rng = np.random.default_rng(1)
    weights = [np.array([1.0, 0, 0]), np.array([0, 0.5, 0.5]), np.array([0.2, 0.3, 0.5, 0.7])]
    weights += [rng.dirichlet(np.ones(3)) for _ in range(5)]
    rows = np.arange(users.size)
    for w in weights:
        got_items, got_finite = lists.top(w, rows)
        want_items, want_finite = catalogue_top(mats, users, seen, w, 10)
        np.testing.assert_array_equal(got_finite, want_finite)
        np.testing.assert_array_equal(got_items[got_finite], want_items[want_finite])
    # Few candidates leave the bound loose and rows go to the whole catalogue; many make
    # every row exact among them.
    assert (sum(lists.full_rows) > 0) == (per_matrix <= 4)


class Blocked(InMemory):
    """The same matrices, handed out `block_rows` rows at a time, as the teacher's are."""

    def __init__(self, mats: np.ndarray, block_rows: int, dtype: type = np.float64) -> None:
        super().__init__(mats)
        self.block_rows, self.dtype = block_rows, dtype
        self.starts: list[int] = []

    def block(self, start: int) -> np.ndarray:
        self.starts.append(start)
        return self.mats[:, start : start + self.block_rows].astype(self.dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per_matrix", [1, 40])
def test_blocks_of_rows_give_the_lists_of_the_whole_matrices(per_matrix: int, dtype: type) -> None:
    """Blocks of float32 rank as their float64 values do (the teacher's blocks are float32)."""
    mats, users, seen = problem(4, n_users=11)
    mats = mats + np.random.default_rng(5).normal(scale=1e-3, size=mats.shape)  # fine values
    mats = mats.astype(dtype).astype(np.float64)  # what the blocks hold, exactly
    scores = Blocked(mats, block_rows=4, dtype=dtype)
    lists = BlendTopK(scores, users, seen, k=10, per_matrix=per_matrix)
    assert scores.starts == [0, 4, 8]
    whole = BlendTopK(mats, users, seen, k=10, per_matrix=per_matrix)
    np.testing.assert_array_equal(lists.cand, whole.cand)
    rows = np.array([10, 0, 5, 4])
    for w in (np.array([0.2, 0.3, 0.5]), np.array([0.0, 1.0, 0.0, 0.4])):
        got_items, got_finite = lists.top(w, rows)
        want_items, want_finite = catalogue_top(mats[:, rows], users[rows], seen, w, 10)
        np.testing.assert_array_equal(got_finite, want_finite)
        np.testing.assert_array_equal(got_items[got_finite], want_items[want_finite])
    # One candidate per matrix sends rows back to their blocks for the whole catalogue.
    assert (sum(lists.full_rows) > 0) == (per_matrix == 1)
    assert (len(scores.starts) > 3) == (per_matrix == 1)


def test_rows_are_ranked_in_any_order_and_subset() -> None:
    mats, users, seen = problem(2, n_items=80)
    lists = BlendTopK(mats, users, seen, k=5, per_matrix=8)
    w = np.array([0.25, 0.25, 0.5])
    everything, _ = lists.top(w, np.arange(users.size))
    rows = np.array([7, 3, 3, 10])
    some, _ = lists.top(w, rows)
    np.testing.assert_array_equal(some, everything[rows])


def test_negative_weights_are_refused() -> None:
    mats, users, seen = problem(3, n_items=50)
    with pytest.raises(ValueError, match="non-negative"):
        BlendTopK(mats, users, seen).top(np.array([1.0, -0.5, 0.5]), np.arange(2))
