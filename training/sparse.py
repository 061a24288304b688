"""Sparse gradients and a lazy Adam for embedding tables too large to update densely.

Dense Adam updates every row of every table each step: with million-item catalogues
that was 0.7 s of a 0.75 s MF step (docs/SCALE.md). Tables of at least SPARSE_MIN_ROWS
rows get sparse gradients and `SparseAdam`, which moves only the rows a batch used.
ml-100k's and ML-1M's tables (users + items + fields: under 11,000 rows) stay dense, so
their training is the Adam it always was.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

SPARSE_MIN_ROWS = 20_000


class Optimizers:
    """Dense Adam, plus SparseAdam for sparse embedding tables: stepped as one."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.parts:
            opt.step()


def sparsify_embeddings(model: nn.Module, *, min_rows: int = SPARSE_MIN_ROWS) -> int:
    """Switches embedding tables of at least `min_rows` rows to sparse gradients."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings >= min_rows:
            module.sparse = True
            count += 1
    return count


def densify_embeddings(model: nn.Module) -> None:
    """Back to dense gradients once training is over: Fisher estimates and any later
    fine-tuning take per-example and dense gradients of the trained model."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.sparse = False
            module.weight.grad = None  # a last sparse gradient would meet dense ones


def sparse_ids(*modules: nn.Module) -> set[int]:
    """ids of the weights of sparse embedding tables in `modules`."""
    return {
        id(m.weight)
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.Embedding) and m.sparse
    }


def make_adam(
    params: Iterable[tuple[nn.Parameter, float]], *, sparse: set[int]
) -> torch.optim.Optimizer | Optimizers:
    """Adam over (parameter, learning rate) pairs; SparseAdam for the `sparse` ones."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for param, lr in params:
        groups.setdefault((id(param) in sparse, lr), []).append(param)
    dense = [{"params": ps, "lr": lr} for (is_sparse, lr), ps in groups.items() if not is_sparse]
    lazy = [{"params": ps, "lr": lr} for (is_sparse, lr), ps in groups.items() if is_sparse]
    # The fused kernel (CPU and CUDA, the devices we train on) makes the same update in one
    # pass per tensor instead of one per operation: fewer passes over memory per step.
    adam = torch.optim.Adam(dense, fused=True)
    if not lazy:
        return adam
    return Optimizers([adam, torch.optim.SparseAdam(lazy)])
