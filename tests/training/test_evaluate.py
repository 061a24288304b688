"""Protocol P metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import Ratings
from training.evaluate import (
    evaluate_popularity,
    format_table,
    popularity_scorer,
    ranking_metrics,
    rating_metrics,
)


def _ratings(rows: list[tuple[int, int, float]]) -> Ratings:
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return Ratings(
        user=arr[:, 0].astype(np.int64),
        item=arr[:, 1].astype(np.int64),
        rating=arr[:, 2].astype(np.float32),
        timestamp=np.zeros(len(arr), dtype=np.int64),
    )


def test_rating_metrics_clip_predictions_to_the_scale() -> None:
    out = rating_metrics(np.array([0.5, 6.0, 3.0]), np.array([1.0, 5.0, 4.0]))
    # Clipped to [1, 5, 3]: errors 0, 0, -1.
    assert out["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert out["mae"] == pytest.approx(1 / 3)


def test_rating_metrics_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 ratings"):
        rating_metrics(np.ones(2), np.ones(3))


# Users 1..3, items 1..5.
TRAIN = _ratings([(1, 1, 5), (1, 2, 3), (2, 3, 4)])
TEST = _ratings([
    (1, 3, 2), (1, 4, 2), (1, 5, 4),  # user 1: relevant {5}... and item 3 rated 2
    (2, 1, 3),  # user 2: no relevant item -> not averaged
    (3, 2, 4),  # user 3: relevant {2}
])  # fmt: skip
SCORES = {
    1: [9.0, 8.0, 1.0, 7.0, 5.0],  # unseen 3,4,5 -> top-2 = [4, 5]
    2: [0.0, 0.0, 0.0, 0.0, 0.0],
    3: [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied -> item order [1, 2]
}


def _scorer(users: np.ndarray) -> np.ndarray:
    return np.array([SCORES[int(u)] for u in users])


def test_ranking_metrics_hand_computed() -> None:
    out = ranking_metrics(_scorer, train=TRAIN, test=TEST, n_users=3, n_items=5, k=2)
    d2 = 1 / math.log2(3)
    # user 1: top [4, 5], relevant {5}: hit at rank 2; user 3: top [1, 2], relevant {2}.
    assert out["n_users"] == 2
    assert out["recall@2"] == pytest.approx((1.0 + 1.0) / 2)
    assert out["ndcg@2"] == pytest.approx((d2 / 1.0 + d2 / 1.0) / 2)
    assert out["hr@2"] == pytest.approx(1.0)
    assert out["coverage@2"] == pytest.approx(4 / 5)  # items {4, 5, 1, 2}


def test_recall_divides_by_all_relevant_items_and_ndcg_uses_binary_gains() -> None:
    test = _ratings([(1, 3, 5), (1, 4, 4), (1, 5, 4)])  # three relevant, k = 2
    scores = {1: [0.0, 0.0, 1.0, 3.0, 2.0]}  # unseen ranking [4, 5, 3]
    out = ranking_metrics(
        lambda us: np.array([scores[int(u)] for u in us]),
        train=TRAIN,
        test=test,
        n_users=3,
        n_items=5,
        k=2,
    )
    assert out["recall@2"] == pytest.approx(2 / 3)
    assert out["ndcg@2"] == pytest.approx(1.0)  # both slots hit, ideal has 2 slots


def test_items_seen_in_training_are_never_recommended() -> None:
    test = _ratings([(1, 1, 5), (1, 3, 4)])  # item 1 was seen in training by user 1
    scores = {1: [100.0, 50.0, 0.0, 0.0, 0.0]}
    out = ranking_metrics(
        lambda us: np.array([scores[int(u)] for u in us]),
        train=TRAIN,
        test=test,
        n_users=3,
        n_items=5,
        k=1,
    )
    # Items 1 and 2 are masked; the tie among 3, 4, 5 goes to item 3: a hit.
    assert out["recall@1"] == pytest.approx(1 / 2)
    assert out["hr@1"] == pytest.approx(1.0)


def test_popularity_baseline_ranks_by_training_count() -> None:
    train = _ratings([(1, 2, 4), (2, 2, 4), (3, 2, 5), (1, 3, 3), (2, 3, 3), (3, 1, 1)])
    scores = popularity_scorer(train, n_items=4)(np.array([1, 2]))
    assert scores.tolist() == [[1, 3, 2, 0], [1, 3, 2, 0]]
    test = _ratings([(1, 1, 5), (1, 4, 2)])
    out = evaluate_popularity(train, test, n_users=3, n_items=4, k=1)
    assert out["recall@1"] == pytest.approx(1.0)  # item 1 is user 1's only unseen popular item
    assert np.isfinite(out["rmse"])


def test_format_table_renders_markdown_rows() -> None:
    table = format_table({"a": {"rmse": 0.91234, "note": "x"}}, columns=["rmse", "note"])
    assert table.splitlines()[2] == "| a | 0.9123 | x |"
