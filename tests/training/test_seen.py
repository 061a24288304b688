import numpy as np

from training.seen import SeenIndex


def test_csr_dedupes_and_sorts_per_user() -> None:
    users = np.array([2, 1, 2, 2, 3])
    items = np.array([5, 4, 1, 5, 2])
    index = SeenIndex.build(users, items, n_users=3, n_items=5)
    assert index.indptr.tolist() == [0, 0, 1, 3, 4]
    assert index.of(0).tolist() == []
    assert index.of(1).tolist() == [4]
    assert index.of(2).tolist() == [1, 5]
    assert index.counts().tolist() == [0, 1, 2, 1]


def test_contains_broadcasts_and_handles_empty() -> None:
    index = SeenIndex.build(np.array([1, 1]), np.array([2, 3]), n_users=2, n_items=4)
    got = index.contains(np.array([[1], [2]]), np.arange(1, 5)[None, :])
    assert got.tolist() == [[False, True, True, False], [False, False, False, False]]
    empty = SeenIndex.build(np.array([], np.int64), np.array([], np.int64), n_users=2, n_items=4)
    assert not empty.contains(np.array([1]), np.array([2])).any()
    assert empty.indptr.tolist() == [0, 0, 0, 0]


def test_mask_rows_hides_rated_items() -> None:
    index = SeenIndex.build(np.array([1, 2]), np.array([2, 1]), n_users=2, n_items=3)
    scores = np.zeros((2, 4))
    index.mask_rows(scores, np.array([2, 1]), value=-np.inf)
    assert np.isinf(scores[0, 1]) and np.isinf(scores[1, 2])
    assert np.isfinite(scores).sum() == 6
