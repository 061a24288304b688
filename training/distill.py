"""Pruning-aware knowledge distillation (PAKD) of the ensemble teacher into the student.

Training examples are lists: one user with `list_positives` items from the user's training
ratings and `list_negatives` items drawn from the whole catalogue (training/sampling.py),
with the teacher's outputs cached on them (training/kd_targets.py). On every list the
student is fitted to the ground truth and to the teacher's ratings, rankings and
representation (training/losses.py).

The student starts as large as the teacher and is pruned progressively: after the warm-up,
on a geometric schedule (training/prune_schedule.py), unit importance is recomputed on this
objective and the least important units are removed physically (training/prune.py);
distillation continues on the smaller model, and the last epochs only fine-tune.

The loop is split the way FuxiCTR's BaseModel splits fit / train_epoch / train_step:
`Distillation.fit` runs the epochs, `train_epoch` one pass over a cached pool,
`train_step` one batch, and `prune_after` the pruning steps scheduled after an epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from training.device import indexed, reproducible, resolve_device
from training.distill_config import StudentConfig
from training.distributed import current, local_device, shard, wrap
from training.evaluate import bounded_users
from training.kd_targets import (
    CatalogueTargets,
    TeacherPool,
    rating_score_weight,
    score_teacher,
    teacher_pools,
)
from training.losses import DistillLoss
from training.models.base import count_params
from training.models.student import (
    RATING_DIMS,
    SCORE_RANK,
    ParamBlock,
    Student,
    StudentShape,
)
from training.prune import prune_step
from training.prune_schedule import (
    finetune_lr_scale,
    initial_shape,
    prune_schedule,
    step_target,
)
from training.sparse import (
    SPARSE_MIN_ROWS,
    Optimizers,
    densify_embeddings,
    make_adam,
    sparse_ids,
    sparsify_embeddings,
)
from training.student_init import factor_tiers, spectral_start

if TYPE_CHECKING:
    from training.data import Dataset, Ratings

log = logging.getLogger(__name__)


def _l2(student: Student, ex: Mapping[str, Tensor]) -> Tensor:
    user = ex["user"].reshape(-1)
    item = ex["item"].reshape(-1)
    reg = student.user.tables[0](user).pow(2).sum() + student.item.tables[0](item).pow(2).sum()
    return reg / user.numel()


class _Objective(nn.Module):
    """One batch's losses as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, student: Student, loss: DistillLoss, l2: float) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self.l2 = l2

    def forward(self, ex: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        parts = self.loss.components(self.student.training_heads, ex, student=self.student)
        return parts, self.l2 * _l2(self.student, ex)


class Distillation:
    """One distillation run: the student, its objective and optimiser, and what it records.

    Every random draw of the loop (batch order, importance examples, random importance)
    comes from one generator seeded with `config.seed`, in a fixed order.
    """

    def __init__(
        self,
        config: StudentConfig,
        student: Student,
        loss: DistillLoss,
        pools: list[TeacherPool],
        *,
        target_params: int,
        device: torch.device | None = None,
        hold_score_path: bool = False,
    ) -> None:
        self.cfg = config
        self.hold_score_path = hold_score_path
        # The score path's blocks, held fixed: their gradients are zeroed before every
        # step (`zero_blocks`).
        self.held: list[ParamBlock] = []
        # Pools stay on the CPU and each batch moves to `device`; pruning runs on the CPU.
        self.device = indexed(device or torch.device("cpu"))
        self.student = student
        self.loss = loss
        self.pools = pools
        self.target_params = target_params
        self.initial_params = count_params(student)
        self.schedule = prune_schedule(config)
        self.done_steps = 0
        # Projection inputs are [rating factors, score factors]; pruning either kind must
        # drop the matching inputs, so the current split point is tracked here.
        self.n_rating = student.shape.rating_factor
        self.gen = torch.Generator().manual_seed(config.seed)
        self.world = current()
        self.batch_lists, self.lr = self._batch_plan()
        self.opt = self._optimizer()
        self.objective = self._objective()
        self.curves: dict[str, list[float]] = {"epoch": [], "params": [], "total": []}
        self.steps: list[dict[str, Any]] = []

    def _batch_plan(self) -> tuple[int, float]:
        per_rank = -(-len(self.pools[0]) // self.world.world_size)
        lists, lr = self.cfg.batch_plan(per_rank, self._n_items())
        if lists != self.cfg.lists_per_batch:
            log.info(
                "%d lists per epoch: batches of %d lists (learning rate %.3g) keep an "
                "epoch within %d steps",
                per_rank,
                lists,
                lr,
                self.cfg.max_epoch_steps,
            )
        return lists, lr

    def _n_items(self) -> int:
        return int(self.student.item_bias.num_embeddings) - 1

    def _objective(self) -> nn.Module:
        """The batch objective, in DDP on several ranks (re-wrapped after every pruning)."""
        return wrap(_Objective(self.student, self.loss, self.cfg.l2), self.world)

    def _optimizer(self) -> torch.optim.Optimizer | Optimizers:
        # Large tables train with sparse gradients, unless a batch scores the whole
        # catalogue (that reads the item-bias table densely). Pruning rebuilds tables, so
        # this runs again with every new optimiser.
        if self.cfg.kd_scope(self._n_items()) == "list":
            sparsify_embeddings(self.student, min_rows=SPARSE_MIN_ROWS)
        params = [*self.student.parameters(), *self.loss.proj.parameters()]
        return make_adam([(p, self.lr) for p in params], sparse=sparse_ids(self.student))

    def fit(self) -> None:
        self._place(self.device)
        self._hold()
        for epoch in range(self.cfg.epochs):
            pool = self.pools[epoch % len(self.pools)]
            self.train_epoch(epoch, pool)
            self.prune_after(epoch, pool)
            self.curves["params"].append(count_params(self.student))
            log.info(
                "student epoch %d/%d: loss %.4f, %d params",
                epoch + 1,
                self.cfg.epochs,
                self.curves["total"][-1],
                self.curves["params"][-1],
            )
        self._place(torch.device("cpu"))
        densify_embeddings(self.student)
        self.student.eval()

    def _place(self, device: torch.device, *, rebuild: bool = False) -> None:
        """Moves the student and the projection; a move or `rebuild` makes a new optimiser,
        and on the training device a new (DDP) objective: DDP cannot wrap a module that
        sits on the CPU for pruning under NCCL."""
        if next(self.student.parameters()).device != device:
            self.student.to(device)
            self.loss.to(device)
            rebuild = True
        if rebuild:
            self.opt = self._optimizer()
            if device == self.device:
                self.objective = self._objective()

    def train_epoch(self, epoch: int, pool: TeacherPool) -> None:
        """One pass over `pool` in a random order; appends the mean losses to the curves."""
        cfg = self.cfg
        self.student.train()
        # Every rank draws the same permutation and trains on its shard of it.
        perm = shard(torch.randperm(len(pool), generator=self.gen), self.world)
        n = perm.numel()
        sums: dict[str, float] = {}
        bar = tqdm(
            range(0, n, self.batch_lists),
            desc=f"student epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not cfg.progress,
        )
        for start in bar:
            self._set_lr(finetune_lr_scale(cfg, epoch, start / n))
            idx = perm[start : start + self.batch_lists]
            losses = self.train_step({k: v.to(self.device) for k, v in pool.batch(idx).items()})
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v * idx.numel()
        self.curves["epoch"].append(epoch + 1)
        for name, value in sums.items():
            self.curves.setdefault(name, []).append(value / n)

    def _set_lr(self, scale: float) -> None:
        # Not a torch LR scheduler: the optimiser is rebuilt after every pruning step and
        # may be two (Optimizers), so a scheduler would be rebuilt and stepped with each.
        parts = self.opt.parts if isinstance(self.opt, Optimizers) else [self.opt]
        for opt in parts:
            for group in opt.param_groups:
                group["lr"] = self.lr * scale

    def train_step(self, ex: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimiser step on a batch of lists; returns each mean loss and the total."""
        parts, l2 = self.objective(ex)
        means = {k: v.mean() for k, v in parts.items()}
        total = self.loss.total(means) + l2
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        zero_blocks(self.held)
        self.opt.step()
        return {**{k: float(v.detach()) for k, v in means.items()}, "total": float(total.detach())}

    def prune_after(self, epoch: int, pool: TeacherPool) -> None:
        """Runs the pruning steps scheduled after `epoch`, each with a fresh optimiser."""
        n_steps = len(self.schedule)
        pruned = False
        while self.done_steps < n_steps and self.schedule[self.done_steps] == epoch:
            self._place(torch.device("cpu"))
            self.done_steps += 1
            target = step_target(self.initial_params, self.target_params, self.done_steps, n_steps)
            step = prune_step(
                self.student,
                target_params=target,
                method=self.cfg.method,
                loss_fn=self.loss.per_example,
                batches=self._importance_batches(pool),
                generator=self.gen,
                min_units=self.cfg.min_units,
                floors={
                    **dict.fromkeys(RATING_DIMS, self.cfg.min_rating_dims),
                    **dict.fromkeys(SCORE_RANK, self.cfg.min_score_rank),
                },
                tiers=factor_tiers if self.hold_score_path else None,
                on_prune=self._on_prune,
            )
            self.steps.append({"epoch": epoch + 1, "target": target, **asdict(step)})
            self.opt = self._optimizer()
            pruned = True
        self._place(self.device, rebuild=pruned)
        if pruned:
            self._hold()

    def _hold(self) -> None:
        """Takes the score path's blocks to hold (pruning replaces its parameters, so
        they are taken again after each pruning step, with the new optimiser)."""
        if self.hold_score_path:
            self.held = self.student.score_path()

    def _importance_batches(self, pool: TeacherPool) -> list[dict[str, Tensor]]:
        cfg = self.cfg
        # One permutation for every field: an importance example must keep its user, items,
        # ratings and teacher targets together (an earlier version drew one per field).
        pick = torch.randperm(len(pool), generator=self.gen)[: cfg.importance_examples]
        examples = pool.batch(pick)
        return [
            {k: v[s : s + cfg.lists_per_batch] for k, v in examples.items()}
            for s in range(0, examples["user"].shape[0], cfg.lists_per_batch)
        ]

    def _on_prune(self, kind: str, keep: Tensor) -> None:
        if kind == "rating_factor":
            rest = torch.arange(self.n_rating, self.loss.proj.in_features)
            self.loss.prune_inputs(torch.cat([keep, rest]))
            self.n_rating = int(keep.numel())
        elif kind == "score_factor":
            self.loss.prune_inputs(torch.cat([torch.arange(self.n_rating), self.n_rating + keep]))


def zero_blocks(blocks: list[ParamBlock]) -> None:
    """Zeroes the gradient of every block, so that Adam leaves it where it is.

    Adam moves an entry by its first moment, which stays exactly zero while every
    gradient the optimiser has seen is zero: the blocks must be zeroed from the new
    optimiser's first step on. Zeroing gradients replaced writing the blocks' values back
    after each step, which made the same model but cost a strided pass over every row
    of the item tables per step: 77% of a step at 10^6 items (docs/SCALE.md item 32).
    """
    for param, index in blocks:
        grad = param.grad
        if grad is None:
            continue
        if not grad.is_sparse:
            grad[index].zero_()
        elif index[0] == slice(None):
            # A sparse gradient's values hold the rows it touches: the block's columns
            # of all of them.
            grad._values()[(slice(None), *index[1:])].zero_()
        else:
            raise ValueError("a block of a sparse gradient must span every row")


def _distill_loss(
    cfg: StudentConfig,
    dataset: Dataset,
    train: Ratings,
    teacher: nn.Module,
    *,
    shape: StudentShape,
    pool: TeacherPool,
) -> DistillLoss:
    catalogue: CatalogueTargets | None = None
    scope = cfg.kd_scope(dataset.feature_map.n_items)
    log.info(
        "ranking distillation over the %s (%s, %d items, %d lists per batch)",
        "whole catalogue" if scope == "catalogue" else "sampled lists",
        cfg.ranking_kd_scope,
        dataset.feature_map.n_items,
        cfg.lists_per_batch,
    )
    if scope == "catalogue":
        if CatalogueTargets.supports(teacher):
            catalogue = CatalogueTargets(teacher, dataset.tables, train)
        else:
            log.warning("the teacher has no two-tower scores: ranking distillation uses lists")
    loss = DistillLoss(
        cfg,
        student_repr=shape.rating_factor + shape.score_factor,
        teacher_repr=pool.repr_dim,
        teacher_repr_scale=pool.repr_scale,
        catalogue=catalogue,
    )
    if pool.repr_dim is None and cfg.w_feature_kd > 0:
        log.warning("the teacher has no 'repr' output: feature distillation is off")
    return loss


def distill_student(
    dataset: Dataset,
    train: Ratings,
    teacher: nn.Module,
    *,
    config: StudentConfig,
    pools: list[TeacherPool] | None = None,
) -> tuple[Student, dict[str, Any]]:
    """Distils (and, unless config.prune is off, progressively prunes) a student.

    Returns the student (eval mode) and a dict with the configuration, the teacher's and
    student's parameter counts, per-epoch loss curves and every pruning step. `pools`
    (from `teacher_pools` with the same config) skips recomputing the teacher's outputs.
    """
    cfg = config.effective()
    started = time.perf_counter()
    torch.set_num_threads(max(cfg.threads, 1))
    torch.manual_seed(cfg.seed)
    teacher_params = count_params(teacher)
    full_teacher, teacher = teacher, score_teacher(teacher, cfg)
    target = round((1.0 - cfg.prune_ratio) * teacher_params)
    shape = initial_shape(dataset.feature_map, cfg, teacher_params)
    student = Student(dataset.feature_map, shape=shape, global_mean=float(train.rating.mean()))
    initial_params = count_params(student)
    rank = spectral_start(student, teacher, dataset.tables) if cfg.score_init == "spectral" else 0
    if pools is None:
        pools = teacher_pools(dataset, train, teacher, config=cfg)
    loss = _distill_loss(cfg, dataset, train, teacher, shape=shape, pool=pools[0])
    device = local_device(resolve_device(cfg.device))
    log.info("student distils on %s", device)
    hold = cfg.hold_score_path and rank > 0
    run = Distillation(
        cfg, student, loss, pools, target_params=target, device=device, hold_score_path=hold
    )
    with reproducible(device):
        run.fit()
    if teacher is not full_teacher:
        _rank_with_rating(student, rating_score_weight(full_teacher), train, dataset, cfg)
    info = {
        "config": cfg.to_json(),
        "teacher_params": teacher_params,
        "target_params": target if cfg.prune else initial_params,
        "initial_params": initial_params,
        "initial_shape": shape.as_dict(),
        "ranking_kd_scope": cfg.kd_scope(dataset.feature_map.n_items),
        "rating_score_weight": float(student.rating_score_weight),
        "params": count_params(student),
        "shape": student.shape.as_dict(),
        "batch_lists": run.batch_lists,
        "lr": run.lr,
        "curves": run.curves,
        "prune_steps": run.steps,
        "seconds": time.perf_counter() - started,
        "device": str(device),
    }
    return student, info


def _rank_with_rating(
    student: Student, weight: float, train: Ratings, dataset: Dataset, cfg: StudentConfig
) -> None:
    """The teacher's rating term, mirrored: the student's rating standardised over
    training users (a seeded sample, bounded in users x catalogue cells) and weighted as
    the teacher weights MF's."""
    users = np.unique(train.user)
    most = bounded_users(dataset.feature_map.n_items, cells=1 << 24)
    if users.size > most:
        users = np.sort(np.random.default_rng(cfg.seed).choice(users, most, replace=False))
    student.rank_with_rating(weight, users, dataset.tables)
    log.info(
        "student ranks with %.3g x its standardised rating (over %d users), as the teacher "
        "does with MF's",
        weight,
        users.size,
    )
