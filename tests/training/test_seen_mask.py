import numpy as np
import pytest
import torch

from training.seen import SeenIndex
from training.seen_mask import SeenMask


def _random_index(seed: int) -> SeenIndex:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 40, size=600)
    items = rng.integers(1, 90, size=600)
    return SeenIndex.build(users, items, n_users=40, n_items=90)


@pytest.mark.parametrize("max_bits", [1 << 32, 0])  # bitmap, then the CSR fallback
def test_mask_matches_seen_index(max_bits: int) -> None:
    index = _random_index(0)
    mask = SeenMask.from_index(index, max_bits=max_bits)
    assert (mask.bits is None) == (max_bits == 0)
    rng = np.random.default_rng(1)
    users = rng.integers(0, 41, size=64)  # repeated users, the unknown user 0 included
    items = rng.integers(0, 91, size=33)  # repeated items too
    got = mask(torch.as_tensor(users), torch.as_tensor(items)).numpy()
    want = index.contains(users[:, None], items[None, :])
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    assert want.any()


def test_catalogue_logits_are_masked_where_the_users_rated() -> None:
    index = _random_index(2)
    mask = SeenMask.from_index(index)
    users = torch.as_tensor(np.random.default_rng(3).integers(0, 41, size=50))
    logits = torch.randn(50, 91)
    got = mask.mask_catalogue_(logits.clone(), users)
    want = logits.masked_fill(
        torch.cat([torch.zeros(50, 1, dtype=torch.bool), mask(users, torch.arange(1, 91))], 1),
        float("-inf"),
    )
    assert torch.equal(got, want)
    assert torch.isfinite(got[:, 0]).all()  # no one rated the unknown item
    assert torch.isinf(got).any()


def test_masked_catalogue_logits_pass_no_gradient_to_rated_items() -> None:
    mask = SeenMask.from_index(_random_index(4))
    users = torch.as_tensor(np.random.default_rng(5).integers(0, 41, size=20))
    logits = torch.randn(20, 91, requires_grad=True)
    masked = mask.mask_catalogue_(logits * 1.0, users)
    torch.nn.functional.cross_entropy(masked, torch.zeros(20, dtype=torch.long)).backward()
    assert logits.grad is not None
    rated = torch.isinf(masked.detach())
    assert (logits.grad[rated] == 0).all() and (logits.grad[~rated] != 0).all()


def test_empty_index_masks_nothing() -> None:
    empty = SeenIndex.build(np.array([], np.int64), np.array([], np.int64), n_users=3, n_items=4)
    for max_bits in (1 << 32, 0):
        mask = SeenMask.from_index(empty, max_bits=max_bits)
        assert not mask(torch.tensor([1, 2]), torch.tensor([1, 4])).any()
        logits = torch.zeros(2, 5)
        assert torch.equal(mask.mask_catalogue_(logits.clone(), torch.tensor([1, 2])), logits)
