"""The lift that turns the items' inner-product search into a search on a sphere."""

from __future__ import annotations

import numpy as np

from contract.towers import lift_items, lift_query


def test_lifted_items_share_one_norm_and_keep_every_inner_product() -> None:
    rng = np.random.default_rng(0)
    items = (rng.normal(size=(500, 8)) * rng.uniform(0.1, 5.0, size=(500, 1))).astype(np.float32)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    lifted, padded = lift_items(items), lift_query(queries)
    assert lifted.shape == (500, 9) and lifted.dtype == np.float32
    assert padded.shape == (20, 9) and padded.dtype == np.float32
    norms = np.linalg.norm(lifted.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(items, axis=1).max(), rtol=1e-6)
    np.testing.assert_allclose(padded @ lifted.T, queries @ items.T, rtol=1e-5, atol=1e-5)


def test_the_longest_item_gets_a_zero_pad_and_a_single_query_lifts() -> None:
    items = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    lifted = lift_items(items)
    np.testing.assert_allclose(lifted[:, 2], [0.0, np.sqrt(24.0), 5.0], rtol=1e-6)
    assert lift_query(np.array([1.0, 2.0], np.float32)).tolist() == [1.0, 2.0, 0.0]
