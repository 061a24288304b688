"""app/state.py: the two-stage answers of a real bundle at the edges of the catalogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.state import ServingState, load_state


@pytest.fixture(scope="module")
def state(bundle_dir: Path) -> ServingState:
    return load_state(
        bundle_dir, metrics=Metrics(CollectorRegistry()), providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize("variant", ["teacher", "student"])
def test_a_user_with_nothing_left_to_recommend_gets_an_empty_list(
    state: ServingState, variant: str
) -> None:
    # A user who rated (or, through the fresh state, interacted with) every item: the
    # teacher's rating graph refuses a batch of 0 rows, which used to be a 500.
    everything = np.arange(len(state.bundle.item_ids), dtype=np.int64)
    answer = state.recommend_known(
        variant, user=1, k=10, exclude_seen=True, extra_exclude=everything
    )
    assert answer.items == []


@pytest.mark.parametrize("variant", ["teacher", "student"])
def test_all_but_one_item_excluded_leaves_that_one(state: ServingState, variant: str) -> None:
    n = len(state.bundle.item_ids)
    answer = state.recommend_known(
        variant, user=1, k=10, exclude_seen=False, extra_exclude=np.arange(1, n, dtype=np.int64)
    )
    assert [item["item_id"] for item in answer.items] == [state.bundle.item_ids[0]]
