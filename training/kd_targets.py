"""The teacher's side of distillation: its outputs on sampled lists, cached once per run,
and its scores over the whole catalogue for a batch of users."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from contract.ratings import DEFAULT_RATING_SCALE
from training.distill_config import StudentConfig
from training.features import FeatureTables
from training.heads import run_heads
from training.sampling import ListSampler, list_tensors
from training.seen import SeenIndex

if TYPE_CHECKING:
    from training.data import Dataset, Ratings

log = logging.getLogger(__name__)


# Lists annotated at a time while a pool is built: bounds the per-pair features held.
POOL_CHUNK = 4096


def score_teacher(teacher: nn.Module, config: StudentConfig) -> nn.Module:
    """The teacher whose scores the student's score head distils: with
    `score_rating = "mirror"`, a copy ranking by its towers alone (the rating term, which
    the student adds from its own rating, set to 0); else the teacher itself."""
    if config.score_rating != "mirror" or rating_score_weight(teacher) == 0.0:
        return teacher
    towers_only = copy.deepcopy(teacher)
    towers_only.get_buffer("rating_score_weight").zero_()
    return towers_only


def rating_score_weight(teacher: nn.Module) -> float:
    """The weight of the rating in the teacher's score (0 for a teacher without one)."""
    weight = getattr(teacher, "rating_score_weight", None)
    return float(weight) if isinstance(weight, Tensor) else 0.0


@torch.no_grad()
def item_tower_table(teacher: nn.Module, tables: FeatureTables) -> Tensor:
    """The frozen two-tower teacher's item vectors for every catalogue row [M + 1, D]."""
    was_training = teacher.training
    teacher.eval()
    rows = tables.item_feats.shape[0]
    vectors: Tensor = teacher.item_tower(  # type: ignore[operator]
        torch.arange(rows), torch.as_tensor(tables.item_feats), torch.as_tensor(tables.item_genres)
    )
    teacher.train(was_training)
    return vectors


@torch.no_grad()
def annotate(
    teacher: nn.Module,
    ex: dict[str, Tensor],
    *,
    kd_items: int | None = None,
    chunk: int = 512,
    item_vectors: Tensor | None = None,
) -> dict[str, Tensor]:
    """Adds the teacher's outputs to [N, L] lists.

    t_score covers every item of a list; t_rating (clipped) and t_repr only the first
    `kd_items` (all if None), because they need the teacher's full per-pair forward, while
    a two-tower teacher given its `item_vectors` (`item_tower_table`) scores the rest with
    one dot product.
    """
    was_training = teacher.training
    teacher.eval()
    n, length = ex["user"].shape[:2]
    k = length if kd_items is None else min(kd_items, length)
    # The item vectors score a list only where the heads do not already cover all of it.
    vectors = item_vectors if k < length else None
    low, high = getattr(teacher, "rating_bounds", DEFAULT_RATING_SCALE)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, n, chunk):
        # Without towers the heads must see the whole list for its scores anyway.
        cols = length if vectors is None else k
        part = {key: v[start : start + chunk, :cols] for key, v in ex.items()}
        out = run_heads(teacher.heads, part)  # type: ignore[arg-type]
        parts.setdefault("t_rating", []).append(out["rating"][:, :k].clamp(low, high))
        if "repr" in out:
            parts.setdefault("t_repr", []).append(out["repr"][:, :k])
        if vectors is not None:
            users = ex["user"][start : start + chunk, 0]
            u = teacher.user_tower(users, ex["user_feats"][start : start + chunk, 0])  # type: ignore[operator]
            v = vectors[ex["item"][start : start + chunk]]  # [b, L, D]
            parts.setdefault("t_score", []).append((v * u.unsqueeze(1)).sum(dim=-1))  # [b, L]
        else:
            parts.setdefault("t_score", []).append(out["score"])
    teacher.train(was_training)
    return {**ex, **{key: torch.cat(v) for key, v in parts.items()}}


@dataclass
class TeacherPool:
    """One sampling of lists with the teacher's outputs on them, held compactly.

    A run keeps its pools through every epoch, so the per-pair features (a float genre row
    per pair) are gathered from the tables per batch instead of stored, and the teacher's
    per-pair representations are stored in float16: on the ML-1M-shaped set two pools of
    full float32 examples held 5.5 GB (docs/SCALE.md). float16 keeps about three
    significant digits of a feature-distillation target; `repr_scale` is computed before
    the rounding.
    """

    tables: FeatureTables
    lists: dict[str, Tensor]  # user [N]; item, rating, rated [N, L]
    targets: dict[str, Tensor]  # t_score [N, L]; t_rating [N, K]; t_repr [N, K, D] float16
    repr_scale: float = 1.0  # mean square of t_repr

    def __len__(self) -> int:
        return int(self.lists["user"].shape[0])

    @property
    def repr_dim(self) -> int | None:
        t_repr = self.targets.get("t_repr")
        return None if t_repr is None else int(t_repr.shape[-1])

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (*self.lists.values(), *self.targets.values())
        )

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Lists `idx` as examples: [b, L] ids with their features, float32 targets."""
        item = self.lists["item"][idx]
        user = self.lists["user"][idx].unsqueeze(1).expand_as(item).contiguous()
        arrays = {
            "user": user,
            "item": item,
            "rating": self.lists["rating"][idx],
            "rated": self.lists["rated"][idx],
        }
        ex = list_tensors(self.tables, {k: v.numpy() for k, v in arrays.items()})
        return {**ex, **{key: v[idx].float() for key, v in self.targets.items()}}


def _annotated_pool(
    teacher: nn.Module, sampler: ListSampler, *, kd_items: int, item_vectors: Tensor | None
) -> TeacherPool:
    """One epoch of lists, annotated POOL_CHUNK lists at a time into preallocated targets
    (a final concatenation would hold every target twice)."""
    lists = sampler.epoch_lists()
    n = lists["user"].shape[0]
    targets: dict[str, Tensor] = {}
    square_sum = 0.0
    for start in range(0, n, POOL_CHUNK):
        part = sampler.tensors({k: v[start : start + POOL_CHUNK] for k, v in lists.items()})
        out = annotate(teacher, part, kd_items=kd_items, item_vectors=item_vectors)
        for key in ("t_score", "t_rating", "t_repr"):
            if key not in out:
                continue
            value = out[key]
            if key == "t_repr":
                square_sum += float(value.double().pow(2).sum())
            if key not in targets:
                dtype = torch.float16 if key == "t_repr" else value.dtype
                targets[key] = torch.empty((n, *value.shape[1:]), dtype=dtype)
            targets[key][start : start + value.shape[0]] = value
    t_repr = targets.get("t_repr")
    return TeacherPool(
        tables=sampler.tables,
        lists={
            "user": torch.as_tensor(lists["user"][:, 0].copy()),
            **{key: torch.as_tensor(lists[key]) for key in ("item", "rating", "rated")},
        },
        targets=targets,
        repr_scale=1.0 if t_repr is None else square_sum / t_repr.numel(),
    )


def teacher_pools(
    dataset: Dataset, train: Ratings, teacher: nn.Module, *, config: StudentConfig
) -> list[TeacherPool]:
    """The list samplings a run cycles through, with the teacher's outputs cached.

    The teacher's per-pair forward is the dearest part of distillation, so a benchmark
    computes these once per fold and passes them to every distill_student call.
    """
    cfg = config.effective()
    teacher = score_teacher(teacher, cfg)
    sampler = ListSampler(
        dataset.feature_map,
        dataset.tables,
        train,
        positives=cfg.list_positives,
        negatives=cfg.list_negatives,
        seed=cfg.seed,
    )
    vectors = None
    if CatalogueTargets.supports(teacher):
        vectors = item_tower_table(teacher, dataset.tables)
    pools = [
        _annotated_pool(teacher, sampler, kd_items=cfg.kd_items, item_vectors=vectors)
        for _ in range(max(cfg.teacher_pools, 1))
    ]
    log.info(
        "teacher outputs cached on %d x %d lists (%.0f MiB)",
        len(pools),
        len(pools[0]),
        sum(pool.nbytes for pool in pools) / 2**20,
    )
    return pools


class CatalogueTargets:
    """The teacher's scores over the whole catalogue for a batch of users.

    The teacher is frozen, so its item-tower outputs are computed once; a batch then costs
    one user-tower pass and one matrix product. `rankable` marks, per user, the items
    protocol P ranks: every real item the user has not rated in training.
    """

    def __init__(self, teacher: nn.Module, tables: FeatureTables, train: Ratings) -> None:
        self.teacher = teacher
        self.item_feats = torch.as_tensor(tables.item_feats)
        self.item_genres = torch.as_tensor(tables.item_genres)
        n_items = self.item_feats.shape[0]
        self.item_vectors = item_tower_table(teacher, tables)  # [M, D]
        self.seen = SeenIndex.from_ratings(
            train, n_users=tables.user_feats.shape[0] - 1, n_items=n_items - 1
        )

    @staticmethod
    def supports(teacher: nn.Module) -> bool:
        return hasattr(teacher, "user_tower") and hasattr(teacher, "item_tower")

    @torch.no_grad()
    def __call__(self, user: Tensor, user_feats: Tensor) -> tuple[Tensor, Tensor]:
        """[N] users, [N, Fu] feats -> teacher scores [N, M], rankable mask [N, M].

        The frozen teacher stays on the CPU; the results go to the device of `user`.
        """
        dev = user.device
        user, user_feats = user.cpu(), user_feats.cpu()
        was_training = self.teacher.training
        self.teacher.eval()
        u = self.teacher.user_tower(user, user_feats)  # type: ignore[operator]
        self.teacher.train(was_training)
        scores = u @ self.item_vectors.T  # [N, M]
        rankable = np.ones(tuple(scores.shape), bool)
        rankable[:, 0] = False  # the unknown-item index is not a real item
        self.seen.mask_rows(rankable, user.numpy(), value=False)
        return scores.to(dev), torch.as_tensor(rankable).to(dev)
