"""Structured pruning of the student: unit importance and physical removal of units.

Importance methods: 'fisher' (group Fisher of the distillation objective, see
training/fisher.py), 'magnitude' (mean squared weight of the unit's parameters) and
'random'. Scores are divided by the parameters a unit's removal saves, so that a cheap unit
and an expensive one are compared by loss increase per parameter saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from training.fisher import group_fisher
from training.heads import ExampleLoss
from training.models.base import count_params
from training.models.student import UNIT_KINDS, Student

log = logging.getLogger(__name__)

Method = Literal["fisher", "magnitude", "random"]
METHODS: tuple[Method, ...] = ("fisher", "magnitude", "random")


@dataclass
class PruneStep:
    """What one pruning step removed."""

    params_before: int
    params_after: int
    removed: dict[str, int]
    shape_after: dict[str, int]


def unit_importance(
    student: Student,
    *,
    method: Method,
    loss_fn: ExampleLoss | None = None,
    batches: Iterable[Mapping[str, Tensor]] = (),
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """kind -> [n_units] raw importance (higher = keep)."""
    counts = student.unit_counts()
    if method == "fisher":
        if loss_fn is None:
            raise ValueError("fisher importance needs the distillation loss and batches")
        return group_fisher(student, loss_fn, batches, units=counts)
    if method == "magnitude":
        with torch.no_grad():
            out: dict[str, Tensor] = {}
            for kind in UNIT_KINDS:
                parts = [p.detach().pow(2).sum(dim=1) for p in student.unit_params(kind)]
                out[kind] = torch.stack(parts).sum(dim=0)
            return out
    if method == "random":
        return {k: torch.rand(n, generator=generator) for k, n in counts.items()}
    raise ValueError(f"unknown importance method {method!r}; choose one of {METHODS}")


def select_keep(
    student: Student,
    importance: Mapping[str, Tensor],
    *,
    remove_params: int,
    min_units: int = 2,
    floors: Mapping[str, int] | None = None,
    tiers: Mapping[str, Tensor] | None = None,
    normalise: bool = True,
) -> dict[str, Tensor]:
    """Greedy: drops the units with the least importance per parameter saved.

    Stops once `remove_params` parameters are gone (costs as of now) and never leaves a
    kind with fewer than `min_units` units. `floors[kind]`, where larger, bounds a kind
    while the removal can be met without going under it: the size target is the run's
    contract and a floor only a preference (a small data set's student may be too small
    for one), so a second pass, in the same order, goes down to `min_units`. `tiers[kind]`
    ([n_units] integers, 0 where absent) orders before importance: a unit of a higher tier
    goes only after every unit of lower tiers that may go.
    Returns kind -> sorted indices to keep.
    """
    counts = student.unit_counts()
    floored = {k: max(min_units, (floors or {}).get(k, 0)) for k in UNIT_KINDS}
    costs = {k: student.unit_cost(k) for k in UNIT_KINDS}
    candidates: list[tuple[int, float, str, int]] = []
    for kind in UNIT_KINDS:
        scores = importance[kind].double()
        if normalise:
            scores = scores / costs[kind]
        tier = (tiers or {}).get(kind, torch.zeros(counts[kind], dtype=torch.long)).tolist()
        candidates += [(int(tier[j]), float(s), kind, j) for j, s in enumerate(scores.tolist())]
    candidates.sort()
    dropped: dict[str, set[int]] = {k: set() for k in UNIT_KINDS}
    removed = 0
    for least in (floored, dict.fromkeys(UNIT_KINDS, min_units)):
        for _, _, kind, j in candidates:
            if removed >= remove_params:
                break
            if j in dropped[kind] or counts[kind] - len(dropped[kind]) <= least[kind]:
                continue
            dropped[kind].add(j)
            removed += costs[kind]
    under = [k for k in UNIT_KINDS if dropped[k] and counts[k] - len(dropped[k]) < floored[k]]
    if under:
        log.info("the size target took %s under their pruning floors", ", ".join(under))
    return {
        k: torch.tensor([j for j in range(counts[k]) if j not in dropped[k]], dtype=torch.long)
        for k in UNIT_KINDS
    }


def apply_keep(student: Student, keep: Mapping[str, Tensor]) -> dict[str, int]:
    """Prunes every kind to its kept units; returns kind -> units removed."""
    removed = {}
    for kind in UNIT_KINDS:
        n = student.unit_counts()[kind]
        idx = keep[kind]
        removed[kind] = n - int(idx.numel())
        if removed[kind]:
            student.prune(kind, idx)
    return removed


def prune_step(
    student: Student,
    *,
    target_params: int,
    method: Method,
    loss_fn: ExampleLoss | None = None,
    batches: Iterable[Mapping[str, Tensor]] = (),
    generator: torch.Generator | None = None,
    min_units: int = 2,
    floors: Mapping[str, int] | None = None,
    tiers: Callable[[Student], Mapping[str, Tensor]] | None = None,
    max_rounds: int = 4,
    on_prune: Callable[[str, Tensor], None] | None = None,
) -> PruneStep:
    """Removes units until the student has at most `target_params` (or cannot shrink).

    Costs interact (dropping an embedding dimension makes every hidden neuron cheaper), so
    the greedy pass is repeated, with fresh importance, until the target is met.
    `tiers(student)`, taken afresh every round, orders units before importance
    (`select_keep`). `on_prune(kind, keep)` lets the caller shrink tensors outside the
    student (the feature-distillation projection) the same way.
    """
    before = count_params(student)
    removed_total = dict.fromkeys(UNIT_KINDS, 0)
    batch_list = list(batches)
    for _ in range(max_rounds):
        now = count_params(student)
        if now <= target_params:
            break
        importance = unit_importance(
            student, method=method, loss_fn=loss_fn, batches=batch_list, generator=generator
        )
        keep = select_keep(
            student,
            importance,
            remove_params=now - target_params,
            min_units=min_units,
            floors=floors,
            tiers=tiers(student) if tiers is not None else None,
            normalise=method != "random",
        )
        removed = apply_keep(student, keep)
        if on_prune is not None:
            for kind, idx in keep.items():
                if removed[kind]:
                    on_prune(kind, idx)
        if not any(removed.values()):
            log.warning("cannot prune below %d parameters (min %d units)", now, min_units)
            break
        for k, v in removed.items():
            removed_total[k] += v
    step = PruneStep(
        params_before=before,
        params_after=count_params(student),
        removed=removed_total,
        shape_after=student.unit_counts(),
    )
    log.info("pruned %d -> %d params (%s)", step.params_before, step.params_after, step.removed)
    return step
