"""When the student is pruned and to what size: the unpruned shape, the epochs after which
a pruning step runs, each step's parameter target, and the fine-tune's learning rate."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from training.distill_config import StudentConfig
from training.features import FeatureMap
from training.models.student import StudentShape, shape_params


def initial_shape(fm: FeatureMap, config: StudentConfig, teacher_params: int) -> StudentShape:
    """The unpruned student's widths: `config.shape`, or scaled to the teacher's size."""
    if config.initial == "shape":
        return _capped(config.shape, config)
    lo, hi = 0.02, 64.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if shape_params(fm, _capped(config.shape.scaled(mid), config)) > teacher_params:
            hi = mid
        else:
            lo = mid
    return _capped(config.shape.scaled(lo), config)


def _capped(shape: StudentShape, config: StudentConfig) -> StudentShape:
    return replace(
        shape,
        score_factor=min(shape.score_factor, config.max_score_factor),
        rating_factor=min(shape.rating_factor, config.max_rating_factor),
    )


def prune_schedule(config: StudentConfig) -> list[int]:
    """Epoch (0-based, pruning after it) of each pruning step."""
    if not config.prune or config.prune_steps <= 0:
        return []
    first = max(config.prune_start - 1, 0)
    last = max(config.epochs - config.finetune_epochs - 1, first)
    return [round(e) for e in np.linspace(first, last, config.prune_steps)]


def step_target(initial_params: int, target_params: int, step: int, n_steps: int) -> int:
    """Parameters left after pruning step `step` (1-based) of `n_steps`: a geometric path
    from the unpruned size (at least the final target) down to the final target."""
    initial = max(initial_params, target_params)
    return round(initial * (target_params / initial) ** (step / n_steps))


def finetune_lr_scale(config: StudentConfig, epoch: int, progress: float) -> float:
    """The learning rate's multiplier at `progress` (0 to 1) through epoch `epoch`
    (0-based): 1 until the fine-tune, then a cosine from 1 to `finetune_lr_end` over its
    epochs, so the last steps average out the noise of Adam's steps rather than add it."""
    start = config.epochs - config.finetune_epochs
    if config.finetune_epochs <= 0 or epoch < start:
        return 1.0
    done = min(max((epoch - start + progress) / config.finetune_epochs, 0.0), 1.0)
    end = config.finetune_lr_end
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * done))
