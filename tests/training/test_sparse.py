"""The lazy Adam for sparse embedding tables against torch's SparseAdam."""

from __future__ import annotations

import pytest
import torch

from training.sparse import LazyAdam


def _sparse_grad(rows: torch.Tensor, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    values = torch.randn(rows.numel(), shape[1], generator=gen)
    return torch.sparse_coo_tensor(rows[None], values, shape, check_invariants=True)


def test_lazy_adam_makes_sparse_adams_update_to_the_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (50, 3)
    start = torch.randn(shape, generator=gen)
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(ours.detach().clone())
    lazy = LazyAdam([ours], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    reference = torch.optim.SparseAdam([theirs], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    batches = [
        torch.tensor([3, 7, 3, 49, 0, 7, 7]),  # repeated rows: their gradients add up
        torch.tensor([], dtype=torch.long),  # a batch that used no row of this table
        torch.tensor([7, 8, 9]),
        torch.tensor([0]),
        *[torch.randint(0, 40, (12,), generator=gen) for _ in range(20)],  # rows 40-48 unused
    ]
    for rows in batches:
        grad = _sparse_grad(rows, shape, gen)
        ours.grad, theirs.grad = grad, grad.clone()
        lazy.step()
        reference.step()
        assert torch.equal(ours, theirs)
    untouched = torch.ones(shape[0], dtype=torch.bool)
    untouched[torch.cat(batches)] = False
    assert untouched.any()
    assert not lazy.state[ours]["exp_avg"][untouched].any()  # rows no batch used stay put
    assert torch.equal(ours.detach()[untouched], start[untouched])
    assert lazy.state[ours]["step"] == reference.state[theirs]["step"]


def test_lazy_adam_refuses_a_dense_gradient() -> None:
    param = torch.nn.Parameter(torch.zeros(4, 2))
    param.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LazyAdam([param]).step()
