"""Sparse gradients and a lazy Adam for embedding tables too large to update densely.

Dense Adam updates every row of every table each step: with million-item catalogues
that was 0.7 s of a 0.75 s MF step (docs/SCALE.md). Tables of at least SPARSE_MIN_ROWS
rows get sparse gradients and `LazyAdam`, which moves only the rows a batch used.
ml-100k's and ML-1M's tables (users + items + fields: under 11,000 rows) stay dense, so
their training is the Adam it always was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor, nn

SPARSE_MIN_ROWS = 20_000


class LazyAdam(torch.optim.Optimizer):
    """torch's `SparseAdam` update (the same arithmetic, in the same order), on the rows
    a sparse gradient names.

    Written here because `SparseAdam` reads and writes its moments through `sparse_mask`
    and sparse additions: on a 10^6 x 64 table and a 578,000-row gradient (`python -m
    bench.lazy_adam --dim 64 --batch 578000`), 1.16 s per step against 0.60 s with row
    gathers and copies; MF trains 28-33% more ratings per second on the million-item
    catalogue (docs/SCALE.md item 30).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        self._update(param, param.grad, group)
        return loss

    def _update(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        if not grad.is_sparse:
            raise RuntimeError("LazyAdam takes sparse gradients (nn.Embedding(sparse=True))")
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1  # as SparseAdam's: counted even when no row moves
        grad = grad.coalesce()  # the update is not linear: one row per index
        rows, values = grad.indices()[0], grad.values()
        if values.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        old_avg = exp_avg.index_select(0, rows)
        old_sq = exp_avg_sq.index_select(0, rows)
        avg = values.sub(old_avg).mul_(1 - beta1).add_(old_avg)
        sq = values.pow(2).sub_(old_sq).mul_(1 - beta2).add_(old_sq)
        exp_avg.index_copy_(0, rows, avg)
        exp_avg_sq.index_copy_(0, rows, sq)
        step = state["step"]
        size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        param.index_add_(0, rows, avg.div_(sq.sqrt_().add_(group["eps"])).mul_(-size))


class Optimizers:
    """Dense Adam, plus LazyAdam for sparse embedding tables: stepped as one."""

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
    """Adam over (parameter, learning rate) pairs; LazyAdam for the `sparse` ones."""
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
    return Optimizers([adam, LazyAdam(lazy)])
