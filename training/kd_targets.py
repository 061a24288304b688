"""The teacher's side of distillation: its outputs on sampled lists, cached once per run,
and its scores over the whole catalogue for a batch of users."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from training.distill_config import StudentConfig
from training.features import FeatureTables
from training.heads import run_heads
from training.sampling import ListSampler
from training.seen import SeenIndex

if TYPE_CHECKING:
    from training.data import Dataset, Ratings


@torch.no_grad()
def annotate(
    teacher: nn.Module, ex: dict[str, Tensor], *, kd_items: int | None = None, chunk: int = 512
) -> dict[str, Tensor]:
    """Adds the teacher's outputs to [N, L] lists.

    t_score covers every item of a list; t_rating (clipped) and t_repr only the first
    `kd_items` (all if None), because they need the teacher's full per-pair forward, while
    a two-tower teacher (`user_tower`/`item_tower`) scores the rest with one dot product.
    """
    was_training = teacher.training
    teacher.eval()
    n, length = ex["user"].shape[:2]
    k = length if kd_items is None else min(kd_items, length)
    towers = hasattr(teacher, "user_tower") and hasattr(teacher, "item_tower") and k < length
    item_vectors: Tensor | None = None
    if towers:
        all_items = torch.unique(ex["item"])
        rows = torch.zeros(int(all_items.max()) + 1, dtype=torch.long)
        rows[all_items] = torch.arange(all_items.numel())
        first = torch.zeros_like(all_items)
        flat_item = ex["item"].reshape(-1)
        first[rows[flat_item]] = torch.arange(flat_item.numel())
        item_vectors = teacher.item_tower(  # type: ignore[operator]
            all_items,
            ex["item_feats"].reshape(flat_item.numel(), -1)[first],
            ex["item_genres"].reshape(flat_item.numel(), -1)[first],
        )  # [n_distinct, D]
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, n, chunk):
        # Without towers the heads must see the whole list for its scores anyway.
        cols = k if towers else length
        part = {key: v[start : start + chunk, :cols] for key, v in ex.items()}
        out = run_heads(teacher.heads, part)  # type: ignore[arg-type]
        parts.setdefault("t_rating", []).append(out["rating"][:, :k].clamp(1.0, 5.0))
        if "repr" in out:
            parts.setdefault("t_repr", []).append(out["repr"][:, :k])
        if towers and item_vectors is not None:
            users = ex["user"][start : start + chunk, 0]
            u = teacher.user_tower(users, ex["user_feats"][start : start + chunk, 0])  # type: ignore[operator]
            v = item_vectors[rows[ex["item"][start : start + chunk]]]  # [b, L, D]
            parts.setdefault("t_score", []).append((v * u.unsqueeze(1)).sum(dim=-1))  # [b, L]
        else:
            parts.setdefault("t_score", []).append(out["score"])
    teacher.train(was_training)
    return {**ex, **{key: torch.cat(v) for key, v in parts.items()}}


def teacher_pools(
    dataset: Dataset, train: Ratings, teacher: nn.Module, *, config: StudentConfig
) -> list[dict[str, Tensor]]:
    """The list samplings a run cycles through, with the teacher's outputs cached.

    The teacher's per-pair forward is the dearest part of distillation, so a benchmark
    computes these once per fold and passes them to every distill_student call.
    """
    cfg = config.effective()
    sampler = ListSampler(
        dataset.feature_map,
        dataset.tables,
        train,
        positives=cfg.list_positives,
        negatives=cfg.list_negatives,
        seed=cfg.seed,
    )
    pools = []
    for _ in range(max(cfg.teacher_pools, 1)):
        pools.append(
            annotate(teacher, sampler.tensors(sampler.epoch_lists()), kd_items=cfg.kd_items)
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
        with torch.no_grad():
            was_training = teacher.training
            teacher.eval()
            self.item_vectors = teacher.item_tower(  # type: ignore[operator]
                torch.arange(n_items), self.item_feats, self.item_genres
            )  # [M, D]
            teacher.train(was_training)
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
