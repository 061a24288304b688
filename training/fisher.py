"""Empirical Fisher information: per parameter, per layer and per structured unit.

Every loss here is per *example*, where an example is one user's list of L items (a
rating example is a list of one). The diagonal empirical Fisher of a parameter is the mean
over examples of its squared per-example gradient; per-example gradients come from
torch.func (vmap over examples), with a plain autograd loop as the fallback for models that
vmap cannot trace.

A unit's importance is the group Fisher 0.5 * E[(sum_unit g * theta)^2]: the sum of
gradient times weight over a unit is the derivative of the loss with respect to a
multiplicative gate on the unit, so its second moment estimates the loss increase if the
unit were removed (Liu et al., 2021, "Group Fisher pruning").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.heads import ExampleLoss

log = logging.getLogger(__name__)


class _Heads(nn.Module):
    """Makes `heads` the forward of a module so that functional_call can swap parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor, **kwargs: Any) -> dict[str, Tensor]:
        return self.model.heads(*args, **kwargs)  # type: ignore[operator]


def _slice(examples: Mapping[str, Tensor], index: slice) -> dict[str, Tensor]:
    return {k: v[index] for k, v in examples.items()}


def per_example_grads_vmap(
    model: nn.Module, loss_fn: ExampleLoss, examples: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """name -> [N, *param.shape] gradients of each example's loss (torch.func)."""
    wrapper = _Heads(model)
    params = {k: v.detach() for k, v in wrapper.named_parameters()}
    buffers = {k: v.detach() for k, v in wrapper.named_buffers()}

    def one(p: dict[str, Tensor], ex: dict[str, Tensor]) -> Tensor:
        def heads(*args: Tensor, **kwargs: Any) -> dict[str, Tensor]:
            out: dict[str, Tensor] = torch.func.functional_call(wrapper, (p, buffers), args, kwargs)
            return out

        single = {k: v.unsqueeze(0) for k, v in ex.items()}
        return loss_fn(heads, single)[0]

    grads: dict[str, Tensor] = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))(
        params, dict(examples)
    )
    return {k.removeprefix("model."): v for k, v in grads.items()}


def per_example_grads_loop(
    model: nn.Module, loss_fn: ExampleLoss, examples: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Same as per_example_grads_vmap, one backward pass per example."""
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    n = next(iter(examples.values())).shape[0]
    out = {k: torch.zeros((n, *params[k].shape)) for k in names}
    for row in range(n):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model.heads, _slice(examples, slice(row, row + 1))).sum()  # type: ignore[arg-type]
        loss.backward()
        for k in names:
            grad = params[k].grad
            if grad is not None:
                out[k][row] = grad
    model.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def _accumulate(total: dict[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    for k, g in grads.items():
        sq = g.pow(2).sum(dim=0)
        if k in total:
            total[k] += sq
        else:
            total[k] = sq


# Per-example gradient values held at once (float32): 256 MiB.
FISHER_GRAD_CELLS = 1 << 26


def diagonal_fisher(
    model: nn.Module,
    loss_fn: ExampleLoss,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    chunk: int = 16,
    use_vmap: bool = True,
) -> dict[str, Tensor]:
    """Mean over examples of squared per-example gradients, for every parameter.

    A vmap call holds [chunk, n_params] gradients: `chunk` shrinks so that stays within
    FISHER_GRAD_CELLS (a teacher with million-item tables has tens of millions of
    parameters); smaller models keep the chunk asked for.
    """
    n_params = sum(p.numel() for p in model.parameters())
    chunk = max(1, min(chunk, FISHER_GRAD_CELLS // max(n_params, 1)))
    was_training = model.training
    model.eval()
    total: dict[str, Tensor] = {}
    count = 0
    try:
        for batch in batches:
            n = next(iter(batch.values())).shape[0]
            for start in range(0, n, chunk):
                part = _slice(batch, slice(start, start + chunk))
                if use_vmap:
                    try:
                        grads = per_example_grads_vmap(model, loss_fn, part)
                    except (RuntimeError, NotImplementedError) as err:
                        # Some ops have no batching rule; the loop gives the same numbers.
                        log.warning("vmap failed (%s); using the per-example loop", err)
                        use_vmap = False
                        grads = per_example_grads_loop(model, loss_fn, part)
                else:
                    grads = per_example_grads_loop(model, loss_fn, part)
                _accumulate(total, grads)
                count += next(iter(part.values())).shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no examples to estimate the Fisher information from")
    return {k: v / count for k, v in total.items()}


def group_fisher(
    model: nn.Module,
    loss_fn: ExampleLoss,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    units: Mapping[str, int],
) -> dict[str, Tensor]:
    """kind -> [n_units] importance 0.5 * E_examples[(dloss/dgate)^2] per structured unit.

    `model.heads` must accept `masks={kind: [B, n_units]}`. Gates are per row so one
    backward pass gives every example's gradient; rows of one example are summed because
    removing a unit closes its gate on all of them.
    """
    was_training = model.training
    model.eval()
    total = {k: torch.zeros(n) for k, n in units.items()}
    count = 0
    try:
        for batch in batches:
            n, length = batch["user"].shape[:2]
            gates = {k: torch.ones(n * length, m, requires_grad=True) for k, m in units.items()}

            def heads(*args: Tensor, _g: dict[str, Tensor] = gates, **kw: Any) -> dict[str, Tensor]:
                out: dict[str, Tensor] = model.heads(*args, masks=_g, **kw)  # type: ignore[operator]
                return out

            loss = loss_fn(heads, batch).sum()
            grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
            for (k, m), g in zip(units.items(), grads, strict=True):
                if g is not None:
                    per_example = g.reshape(n, length, m).sum(dim=1)  # [N, m]
                    total[k] += per_example.pow(2).sum(dim=0).detach()
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no examples to estimate the Fisher information from")
    return {k: 0.5 * v / count for k, v in total.items()}


# ---------------------------------------------------------------- per-layer tables


@dataclass
class LayerSensitivity:
    component: str
    layer: str
    params: int
    fisher_trace: float  # sum of F over the layer
    removal: float  # 0.5 * sum F * theta^2: estimated loss increase if the layer were zeroed

    @property
    def removal_per_param(self) -> float:
        return self.removal / max(self.params, 1)


def layer_sensitivity(model: nn.Module, fisher: Mapping[str, Tensor]) -> list[LayerSensitivity]:
    """Aggregates a diagonal Fisher per layer (the module owning each parameter)."""
    rows: dict[str, LayerSensitivity] = {}
    for name, param in model.named_parameters():
        if name not in fisher:
            continue
        layer = name.rsplit(".", 1)[0] if "." in name else name
        component = name.split(".", 1)[0]
        f = fisher[name]
        row = rows.setdefault(layer, LayerSensitivity(component, layer, 0, 0.0, 0.0))
        row.params += param.numel()
        row.fisher_trace += float(f.sum())
        row.removal += 0.5 * float((f * param.detach().pow(2)).sum())
    return list(rows.values())


def unit_importance_diag(
    model: nn.Module, fisher: Mapping[str, Tensor]
) -> dict[str, dict[str, Tensor]]:
    """Per-unit 0.5 * sum F * theta^2 for generic structured units of any model.

    Units: embedding dimensions (columns of nn.Embedding tables and Parameter tables named
    like embeddings), output neurons of nn.Linear layers (MLP neurons), output channels of
    nn.Conv1d (CIN feature maps), and attention heads of modules that declare `n_heads`
    or `heads` with their query/key/value projections. Returns layer -> kind -> [n_units].
    """
    out: dict[str, dict[str, Tensor]] = {}
    for mod_name, module in model.named_modules():
        units = _parameter_units(module, mod_name, fisher)
        heads = getattr(module, "n_heads", getattr(module, "heads", None))
        if isinstance(heads, int) and heads > 1:
            per_head = _attention_heads(module, mod_name, fisher, heads)
            if per_head is not None:
                units["attention_head"] = per_head
        if units:
            out[mod_name] = units
    return out


def _parameter_units(
    module: nn.Module, mod_name: str, fisher: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """kind -> [n_units] 0.5 F theta^2 of the module's own parameters, by module type."""
    owned = dict(module.named_parameters(recurse=False))

    def term(n: str) -> Tensor | None:
        key = f"{mod_name}.{n}" if mod_name else n
        if key not in fisher:
            return None
        return 0.5 * fisher[key] * owned[n].detach().pow(2)

    if isinstance(module, nn.Embedding):
        t = term("weight")
        return {} if t is None else {"embedding_dim": t.sum(dim=0)}
    if isinstance(module, nn.Linear | nn.Conv1d):
        t = term("weight")
        if t is None:
            return {}
        # A Linear weight is [out, in], a Conv1d one [out, in, k]: a unit is an output row.
        unit = t.flatten(1).sum(dim=1)
        b = term("bias") if module.bias is not None else None
        if b is not None:
            unit = unit + b
        return {"neuron" if isinstance(module, nn.Linear) else "feature_map": unit}
    units: dict[str, Tensor] = {}
    for n, p in owned.items():
        t = term(n)
        if t is not None and p.dim() == 2:
            units[f"{n}_column"] = t.sum(dim=0)
    return units


def _attention_heads(
    module: nn.Module, mod_name: str, fisher: Mapping[str, Tensor], heads: int
) -> Tensor | None:
    """Sums 0.5 F theta^2 of each head's rows in the query/key/value (and residual) maps.

    A fused `qkv` projection has its rows ordered (3, heads, d_head), separate ones
    (heads, d_head): the layout of training/models/autoint.py.
    """
    total: Tensor | None = None
    tags = ("qkv", "query", "key", "value", "residual", "q_proj", "k_proj", "v_proj")
    for name, param in module.named_parameters():
        key = f"{mod_name}.{name}" if mod_name else name
        if not any(tag in name.lower() for tag in tags) or key not in fisher:
            continue
        groups = 3 * heads if "qkv" in name.lower() else heads
        if param.shape[0] % groups:
            continue
        t = (0.5 * fisher[key] * param.detach().pow(2)).reshape(groups // heads, heads, -1)
        t = t.sum(dim=(0, 2))
        total = t if total is None else total + t
    return total


def summarise_units(units: Mapping[str, Mapping[str, Tensor]]) -> list[dict[str, Any]]:
    """Per unit kind: how concentrated importance is (share held by the top quarter)."""
    by_kind: dict[str, list[Tensor]] = {}
    for kinds in units.values():
        for kind, values in kinds.items():
            by_kind.setdefault(kind, []).append(values.flatten())
    rows = []
    for kind, parts in sorted(by_kind.items()):
        v = torch.cat(parts).double()
        ordered = v.sort(descending=True).values
        top = ordered[: max(1, v.numel() // 4)].sum()
        rows.append(
            {
                "kind": kind,
                "units": int(v.numel()),
                "total": float(v.sum()),
                "top25_share": float(top / v.sum()) if float(v.sum()) > 0 else float("nan"),
                "near_zero_share": float((v < 1e-3 * v.max()).double().mean()),
            }
        )
    return rows
