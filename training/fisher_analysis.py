"""The teacher's Fisher report: per-layer and per-unit sensitivity of each teacher
component for its rating, ranking and distillation losses (the pipeline's fisher step).

It draws the example lists, builds the losses and tabulates the estimates of
training/fisher.py, which holds the maths only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.fisher import (
    LayerSensitivity,
    diagonal_fisher,
    layer_sensitivity,
    summarise_units,
    unit_importance_diag,
)
from training.losses import teacher_fisher_losses
from training.sampling import ListSampler

if TYPE_CHECKING:
    from training.data import Dataset, Ratings

log = logging.getLogger(__name__)


def _layer_row(r: LayerSensitivity) -> dict[str, Any]:
    return {
        "component": r.component,
        "layer": r.layer,
        "params": r.params,
        "fisher_trace": r.fisher_trace,
        "removal": r.removal,
        "removal_per_param": r.removal_per_param,
    }


def fisher_report(
    teacher: nn.Module,
    dataset: Dataset,
    train: Ratings,
    *,
    examples: int,
    positives: int,
    negatives: int,
    temperature: float,
    chunk: int,
    seed: int,
) -> dict[str, Any]:
    """Measured per-layer Fisher sensitivity of each teacher component, for three losses.

    The estimates use `examples` user lists of `positives` rated and `negatives` sampled
    items. rating: 0.5 (r - y)^2 on training pairs; ranking: listwise softmax cross-entropy
    of a user's rated-and-liked items against sampled items; distill: the Fisher of the
    teacher's own predictive distributions (labels drawn from the teacher: y ~ N(r, 1) and
    one item ~ softmax(score / temperature)), which is the curvature of the distillation
    loss at student = teacher. `chunk` examples share one vmap call.
    """
    torch.manual_seed(seed)
    sampler = ListSampler(
        dataset.feature_map,
        dataset.tables,
        train,
        positives=positives,
        negatives=negatives,
        seed=seed,
    )
    lists = sampler.fixed_examples(examples)
    losses = teacher_fisher_losses(teacher, lists, temperature=temperature)
    tables: dict[str, list[dict[str, Any]]] = {}
    units: dict[str, list[dict[str, Any]]] = {}
    for loss_name, (loss_fn, batch) in losses.items():
        fisher = diagonal_fisher(teacher, loss_fn, [batch], chunk=chunk)
        tables[loss_name] = [_layer_row(r) for r in layer_sensitivity(teacher, fisher)]
        units[loss_name] = summarise_units(unit_importance_diag(teacher, fisher))
        log.info("teacher Fisher (%s): %d layers", loss_name, len(tables[loss_name]))
    return {"examples": int(lists["user"].shape[0]), "layers": tables, "units": units}
