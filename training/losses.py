"""The losses of pruning-aware distillation, each per list [N], and their weighted sum.

- ground truth: squared error on the rated items and a listwise softmax cross-entropy that
  puts the liked (>= 4) items on top;
- rating distillation: squared error against the teacher's clipped rating on every item
  of the list (unrated ones included: that is where the teacher adds information);
- ranking distillation: T^2 * KL(softmax(teacher / T) || softmax(student / T)) over every
  item the user has not rated in training, or over the list only;
- top-k ranking distillation: the teacher's top items in its order above the rest (with
  the catalogue scope only);
- score distillation: squared error of the centred catalogue scores (the catalogue scope
  only);
- feature distillation: the student's per-factor interactions, through a learned linear
  projection, against the teacher's representation (over its mean square).

`teacher_fisher_losses` gives the teacher's own rating, ranking and distillation losses,
whose Fisher information the teacher report measures.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.distill_config import StudentConfig
from training.heads import ExampleLoss, HeadsFn, run_heads
from training.kd_targets import CatalogueTargets, annotate

if TYPE_CHECKING:
    from training.models.student import Student

LIKED = 4.0


def rating_kd(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared difference of ratings over each list: [N, L] x2 -> [N]."""
    return (student - teacher).pow(2).mean(dim=-1)


def ranking_kd(student: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per list: [N, L] x2 -> [N]."""
    log_p_t = F.log_softmax(teacher / temperature, dim=-1)
    log_p_s = F.log_softmax(student / temperature, dim=-1)
    return temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)


def catalogue_ranking_kd(
    student: Tensor, teacher: Tensor, rankable: Tensor, *, temperature: float
) -> Tensor:
    """ranking_kd over the rankable items of each row only: [N, M] x3 -> [N]."""
    # A finite fill, not -inf: exp() of it is exactly 0 and no gradient turns into NaN.
    hidden = torch.tensor(-1e4)
    return ranking_kd(
        torch.where(rankable, student, hidden),
        torch.where(rankable, teacher, hidden),
        temperature=temperature,
    )


def topk_ranking_kd(student: Tensor, teacher: Tensor, rankable: Tensor, *, k: int) -> Tensor:
    """Relaxed ranking distillation (DE-RRD, Kang et al. 2020) over each row's rankable
    items: the Plackett-Luce likelihood of the teacher's top `k`, in the teacher's order,
    above every other rankable item, whose own order is left free. [N, M] x3 -> [N].

    The catalogue softmax above weighs every item by the teacher's probability, so with
    standardised scores most of its mass sits in the long middle of the ranking; this
    term spends the student's capacity on the order at the top, where NDCG@10 is decided.
    """
    hidden = torch.tensor(-1e4)
    k = min(k, student.shape[-1])
    top = torch.where(rankable, teacher, hidden).topk(k, dim=-1).indices  # [N, k]
    # Top items the user cannot rank (fewer than k rankable) take no part anywhere.
    valid = rankable.gather(-1, top)  # [N, k]
    s_top = torch.where(valid, student.gather(-1, top), hidden)  # [N, k]
    rest = rankable.scatter(-1, top, False)
    lse_rest = torch.where(rest, student, hidden).logsumexp(dim=-1, keepdim=True)  # [N, 1]
    # log(sum_{j >= i} exp s_top[j] + sum_rest exp s) for each position i of the top.
    tail = s_top.flip(-1).logcumsumexp(dim=-1).flip(-1)  # [N, k]
    nll = (torch.logaddexp(tail, lse_rest) - s_top) * valid.float()
    return nll.sum(dim=-1) / valid.sum(dim=-1).clamp(min=1)


def catalogue_score_kd(student: Tensor, teacher: Tensor, rankable: Tensor) -> Tensor:
    """Mean squared difference of the scores over each row's rankable items, each side
    centred on its row's mean there (a per-user constant does not change a ranking):
    [N, M] x3 -> [N]. Unmasked, a low-rank factorisation minimising it is what the
    spectral start computes (training/student_init.py): this term holds the score path
    to the teacher's scores themselves, not only to their softmax."""
    mask = rankable.float()
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    diff = (student - teacher) * mask  # [N, M]
    centred = (diff - diff.sum(dim=-1, keepdim=True) / count) * mask
    return centred.pow(2).sum(dim=-1) / count.squeeze(-1)


def feature_kd(projected: Tensor, teacher: Tensor, *, scale: float = 1.0) -> Tensor:
    """Mean squared error of representations per list, over `scale`: [N, L, D] x2 -> [N]."""
    return (projected - teacher).pow(2).mean(dim=(-1, -2)) / scale


def rating_loss(pred: Tensor, rating: Tensor, rated: Tensor) -> Tensor:
    """Squared error on the rated items of each list: [N, L] -> [N] (0 if none rated)."""
    mask = rated.float()
    return ((pred - rating).pow(2) * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def ranking_loss(score: Tensor, rating: Tensor, rated: Tensor) -> Tensor:
    """Listwise softmax cross-entropy of the liked items against the list: [N, L] -> [N]."""
    liked = (rated & (rating >= LIKED)).float()
    log_p = F.log_softmax(score, dim=-1)
    return -(log_p * liked).sum(dim=-1) / liked.sum(dim=-1).clamp(min=1.0)


class DistillLoss(nn.Module):
    """The weighted PAKD objective; owns the feature-distillation projection."""

    def __init__(
        self,
        config: StudentConfig,
        *,
        student_repr: int,
        teacher_repr: int | None,
        teacher_repr_scale: float = 1.0,
        catalogue: CatalogueTargets | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.catalogue = catalogue
        self.use_feature = teacher_repr is not None and config.w_feature_kd > 0
        self.proj = nn.Linear(student_repr, teacher_repr or 1)
        nn.init.zeros_(self.proj.bias)  # starts at loss 1: the scale below is the target's
        # Mean square of the teacher representation: the loss of predicting zeros is 1.
        self.repr_scale = max(float(teacher_repr_scale), 1e-8)

    def components(
        self, heads: HeadsFn, ex: Mapping[str, Tensor], *, student: Student | None = None
    ) -> dict[str, Tensor]:
        """Each loss per list [N]. With `student` (training) and catalogue targets, ranking
        distillation covers the whole catalogue; without (the per-example importance
        estimates, where scoring every item for every list is too dear) the list."""
        c = self.config
        wants_catalogue = c.w_ranking_kd > 0 or c.w_topk_kd > 0 or c.w_score_kd > 0
        catalogue = self.catalogue if wants_catalogue and student is not None else None
        if catalogue is not None and student is not None:
            dev = ex["user"].device  # the catalogue's tables live on the CPU; no copy there
            # Every item's tower outputs, once: the lists' pairs gather theirs from them.
            item_outputs = student.item_outputs(
                catalogue.item_feats.to(dev), catalogue.item_genres.to(dev)
            )
            heads = partial(student.training_heads, item_outputs=item_outputs)
        out = run_heads(heads, ex)
        parts = {
            "gt_rating": rating_loss(out["rating"], ex["rating"], ex["rated"]),
            "gt_ranking": ranking_loss(out["score"], ex["rating"], ex["rated"]),
        }
        if c.w_rating_kd > 0:
            k = ex["t_rating"].shape[1]  # the teacher rated the first k items of each list
            parts["rating_kd"] = rating_kd(out["rating"][:, :k], ex["t_rating"])
        if catalogue is not None and student is not None:
            user, user_feats = ex["user"][:, 0], ex["user_feats"][:, 0]
            t_scores, rankable = catalogue(user, user_feats)
            s_scores = student.scores_of(user, user_feats, item_outputs)
            if c.w_ranking_kd > 0:
                parts["ranking_kd"] = catalogue_ranking_kd(
                    s_scores, t_scores, rankable, temperature=c.temperature
                )
            if c.w_topk_kd > 0:
                parts["topk_kd"] = topk_ranking_kd(s_scores, t_scores, rankable, k=c.topk_kd_items)
            if c.w_score_kd > 0:
                parts["score_kd"] = catalogue_score_kd(s_scores, t_scores, rankable)
        elif c.w_ranking_kd > 0:
            parts["ranking_kd"] = ranking_kd(out["score"], ex["t_score"], temperature=c.temperature)
        if self.use_feature and "t_repr" in ex:
            k = ex["t_repr"].shape[1]
            parts["feature_kd"] = feature_kd(
                self.proj(out["repr"][:, :k]), ex["t_repr"], scale=self.repr_scale
            )
        return parts

    def total(self, parts: Mapping[str, Tensor]) -> Tensor:
        c = self.config
        weights = {
            "gt_rating": c.w_ground_truth,
            "gt_ranking": c.w_ground_truth,
            "rating_kd": c.w_rating_kd,
            "ranking_kd": c.w_ranking_kd,
            "feature_kd": c.w_feature_kd,
            "topk_kd": c.w_topk_kd,
            "score_kd": c.w_score_kd,
        }
        return sum((weights[k] * v for k, v in parts.items()), torch.zeros(()))

    def per_example(self, heads: HeadsFn, ex: Mapping[str, Tensor]) -> Tensor:
        """The objective per list [N], as the Fisher estimates need it."""
        return self.total(self.components(heads, ex))

    def prune_inputs(self, keep: Tensor) -> None:
        """Drops projection inputs of removed student factors."""
        weight = self.proj.weight.detach()[:, keep].clone()
        bias = self.proj.bias.detach().clone()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.weight = nn.Parameter(weight)
        self.proj.bias = nn.Parameter(bias)


def teacher_fisher_losses(
    teacher: nn.Module, ex: dict[str, Tensor], *, temperature: float
) -> dict[str, tuple[ExampleLoss, dict[str, Tensor]]]:
    """The teacher's rating, ranking and distillation losses per list, with their inputs."""
    annotated = annotate(teacher, ex)
    n, length = ex["user"].shape[:2]
    gen = torch.Generator().manual_seed(0)
    y_rating = annotated["t_rating"] + torch.randn(n, length, generator=gen)
    probs = F.softmax(annotated["t_score"] / temperature, dim=-1)
    y_item = torch.multinomial(probs, 1, generator=gen)  # [N, 1]
    distill_ex = {**ex, "y_rating": y_rating, "y_item": y_item}

    def rating(heads: HeadsFn, b: Mapping[str, Tensor]) -> Tensor:
        out = run_heads(heads, b)
        return 0.5 * rating_loss(out["rating"], b["rating"], b["rated"])

    def ranking(heads: HeadsFn, b: Mapping[str, Tensor]) -> Tensor:
        return ranking_loss(run_heads(heads, b)["score"], b["rating"], b["rated"])

    def distill(heads: HeadsFn, b: Mapping[str, Tensor]) -> Tensor:
        out = run_heads(heads, b)
        gauss = 0.5 * (out["rating"] - b["y_rating"]).pow(2).mean(dim=-1)
        log_p = F.log_softmax(out["score"] / temperature, dim=-1)
        return gauss - log_p.gather(-1, b["y_item"]).squeeze(-1)

    return {"rating": (rating, ex), "ranking": (ranking, ex), "distill": (distill, distill_ex)}
