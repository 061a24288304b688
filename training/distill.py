"""Pruning-aware knowledge distillation (PAKD) of the ensemble teacher into the student.

Training examples are lists: one user with `list_positives` items from the user's training
ratings and `list_negatives` items drawn from the whole catalogue. On every list the student
is fitted to
- the ground truth: squared error on the rated items and a listwise softmax cross-entropy
  that puts the liked (>= 4) items on top, weight `w_ground_truth`;
- rating distillation: squared error against the teacher's clipped rating on every item of
  the list (unrated ones included: that is where the teacher adds information), 0.4;
- ranking distillation: T^2 * KL(softmax(teacher / T) || softmax(student / T)) over every
  item the user has not rated in training (the ranking protocol P scores; the two-tower
  scores of both models make the whole catalogue cheap), or over the list only, 0.4;
- feature distillation: the student's per-factor interactions, through a learned linear
  projection, against the teacher's AutoInt representation (over its mean square), 0.2.

The student starts as large as the teacher and is pruned progressively: after the warm-up,
on a geometric schedule, unit importance is recomputed on this objective and the least
important units are removed physically (training/prune.py); distillation continues on the
smaller model, and the last epochs only fine-tune.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from training.data import seen_csr
from training.features import FeatureMap, FeatureTables
from training.fisher import ExampleLoss, HeadsFn
from training.models.base import count_params
from training.models.student import Student, StudentShape, shape_params
from training.prune import Method, PruneStep, prune_step

if TYPE_CHECKING:
    from training.data import Dataset, Ratings

log = logging.getLogger(__name__)

LIKED = 4.0


@dataclass
class StudentConfig:
    """Everything that defines a student run; `quick` shrinks it for tests."""

    shape: StudentShape = field(default_factory=StudentShape)
    # "teacher": scale `shape` so that the unpruned student has the teacher's parameter
    # count (then prune_ratio is exactly the share of parameters removed); "shape": as given.
    initial: Literal["teacher", "shape"] = "teacher"
    # Share of the *teacher's* parameters the student must lose: 0.8 so that the ONNX file,
    # which is mostly weights, is at most 20% of the teacher's (the issue asks >= 0.75).
    prune_ratio: float = 0.8
    prune: bool = True
    method: Method = "fisher"
    epochs: int = 10
    prune_start: int = 2  # epochs of plain distillation before the first pruning step
    prune_steps: int = 5
    finetune_epochs: int = 3
    lists_per_batch: int = 64
    list_positives: int = 16
    list_negatives: int = 96
    # Items per list (the first ones) that get the teacher's full per-pair forward for
    # rating and feature distillation; ranking distillation covers the whole list.
    kd_items: int = 32
    lr: float = 3e-3
    l2: float = 1e-5  # on the embedding rows a batch uses
    w_rating_kd: float = 0.4
    w_ranking_kd: float = 0.4
    w_feature_kd: float = 0.2
    # The ground truth gets a small weight: the teacher's targets carry more than the
    # labels they were fitted to; bench.student's ablations compare 0.2 and 0 with it.
    w_ground_truth: float = 0.05
    # The teacher's blended scores are standardised (unit variance over the catalogue):
    # T = 1 keeps its top items distinct, which is where NDCG@10 is decided.
    temperature: float = 1.0
    # "catalogue": ranking distillation over every item the user has not rated in
    # training, which is the ranking protocol P scores; "list": over the sampled list only
    # (for teachers without two-tower scores, or catalogues too large to score per batch).
    ranking_kd_scope: Literal["catalogue", "list"] = "catalogue"
    importance_examples: int = 512
    fisher_examples: int = 256
    fisher_chunk: int = 16
    teacher_pools: int = 2  # distinct list samplings whose teacher outputs are cached
    min_units: int = 2
    quick: bool = False
    seed: int = 0
    threads: int = 1
    progress: bool = True

    def effective(self) -> StudentConfig:
        """The configuration actually run: `quick` caps the work for tests and smoke runs."""
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must lie in [0, 1), got {self.prune_ratio}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if min(self.w_rating_kd, self.w_ranking_kd, self.w_feature_kd, self.w_ground_truth) < 0:
            raise ValueError("loss weights must be non-negative")
        if not self.quick:
            return self
        return replace(
            self,
            epochs=min(self.epochs, 6),
            prune_start=1,
            prune_steps=min(self.prune_steps, 2),
            finetune_epochs=min(self.finetune_epochs, 2),
            lists_per_batch=min(self.lists_per_batch, 16),
            importance_examples=min(self.importance_examples, 64),
            fisher_examples=min(self.fisher_examples, 32),
            teacher_pools=1,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = self.shape.as_dict()
        return out


# ---------------------------------------------------------------- list sampling


class ListSampler:
    """Draws per-user item lists; arrays are [N, L] with L = positives + negatives."""

    def __init__(
        self,
        fm: FeatureMap,
        tables: FeatureTables,
        train: Ratings,
        *,
        positives: int,
        negatives: int,
        seed: int,
    ) -> None:
        if len(train) == 0:
            raise ValueError("no training ratings to distil on")
        self.fm = fm
        self.tables = tables
        self.positives = positives
        self.negatives = negatives
        self.rng = np.random.default_rng(seed)
        order = np.lexsort((train.item, train.user))
        self.items = train.item[order].astype(np.int64)
        self.ratings = train.rating[order].astype(np.float32)
        counts = np.bincount(train.user[order], minlength=fm.n_users + 1)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.users = np.flatnonzero(counts > 0).astype(np.int64)
        self.seen_keys = np.unique(train.user.astype(np.int64) * (fm.n_items + 1) + train.item)

    def _lists(self, users: np.ndarray) -> dict[str, np.ndarray]:
        n, p, q = users.size, self.positives, self.negatives
        item = np.empty((n, p + q), np.int64)
        rating = np.zeros((n, p + q), np.float32)
        rated = np.zeros((n, p + q), bool)
        for row, u in enumerate(users):
            lo, hi = self.indptr[u], self.indptr[u + 1]
            pick = lo + self.rng.choice(hi - lo, size=p, replace=hi - lo < p)
            item[row, :p] = self.items[pick]
            rating[row, :p] = self.ratings[pick]
            rated[row, :p] = True
        item[:, p:] = self.rng.integers(1, self.fm.n_items + 1, size=(n, q))
        # A drawn item the user has rated is not a negative: redraw a few times; any that
        # remain (users who rated most of the catalogue) count as unrated list members.
        neg = item[:, p:]
        for _ in range(8):
            clash = np.isin(users[:, None] * (self.fm.n_items + 1) + neg, self.seen_keys)
            if not clash.any():
                break
            neg[clash] = self.rng.integers(1, self.fm.n_items + 1, size=int(clash.sum()))
        item[:, p:] = neg
        return {
            "user": np.repeat(users[:, None], p + q, axis=1),
            "item": item,
            "rating": rating,
            "rated": rated,
        }

    def epoch_lists(self) -> dict[str, np.ndarray]:
        """Each user once per `positives` of their training ratings (rounded up), shuffled."""
        counts = np.diff(self.indptr)[self.users]
        users = np.repeat(self.users, np.ceil(counts / self.positives).astype(np.int64))
        return self._lists(self.rng.permutation(users))

    def fixed_examples(self, n: int) -> dict[str, Tensor]:
        users = self.rng.choice(self.users, size=n, replace=self.users.size < n)
        return self.tensors(self._lists(users))

    def tensors(self, lists: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
        user, item = lists["user"], lists["item"]
        return {
            "user": torch.as_tensor(user),
            "item": torch.as_tensor(item),
            "user_feats": torch.as_tensor(self.tables.user_feats[user]),
            "item_feats": torch.as_tensor(self.tables.item_feats[item]),
            "item_genres": torch.as_tensor(self.tables.item_genres[item]),
            "rating": torch.as_tensor(lists["rating"]),
            "rated": torch.as_tensor(lists["rated"]),
        }


def run_heads(heads: HeadsFn, ex: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Calls a model's heads on [N, L] lists; outputs come back as [N, L] (repr [N, L, D])."""
    n, length = ex["user"].shape[:2]
    out = heads(
        ex["user"].reshape(-1),
        ex["item"].reshape(-1),
        ex["user_feats"].reshape(n * length, -1),
        ex["item_feats"].reshape(n * length, -1),
        ex["item_genres"].reshape(n * length, -1),
    )
    shaped = {k: v.reshape(n, length, *v.shape[1:]) for k, v in out.items()}
    return shaped


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
        self.indptr, rated = seen_csr(train, tables.user_feats.shape[0] - 1)
        self.rated_items = torch.as_tensor(rated)

    @staticmethod
    def supports(teacher: nn.Module) -> bool:
        return hasattr(teacher, "user_tower") and hasattr(teacher, "item_tower")

    @torch.no_grad()
    def __call__(self, user: Tensor, user_feats: Tensor) -> tuple[Tensor, Tensor]:
        """[N] users, [N, Fu] feats -> teacher scores [N, M], rankable mask [N, M]."""
        was_training = self.teacher.training
        self.teacher.eval()
        u = self.teacher.user_tower(user, user_feats)  # type: ignore[operator]
        self.teacher.train(was_training)
        scores = u @ self.item_vectors.T  # [N, M]
        rankable = torch.ones_like(scores, dtype=torch.bool)
        rankable[:, 0] = False  # the unknown-item index is not a real item
        lo, hi = self.indptr[user.numpy()], self.indptr[user.numpy() + 1]
        rows = torch.as_tensor(np.repeat(np.arange(user.numel()), hi - lo))
        spans = [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]
        cols = self.rated_items[np.concatenate(spans)]
        rankable[rows, cols] = False
        return scores, rankable


# ---------------------------------------------------------------- losses, per list [N]


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
        out = run_heads(heads, ex)
        parts = {
            "gt_rating": rating_loss(out["rating"], ex["rating"], ex["rated"]),
            "gt_ranking": ranking_loss(out["score"], ex["rating"], ex["rated"]),
        }
        if c.w_rating_kd > 0:
            k = ex["t_rating"].shape[1]  # the teacher rated the first k items of each list
            parts["rating_kd"] = rating_kd(out["rating"][:, :k], ex["t_rating"])
        if c.w_ranking_kd > 0 and student is not None and self.catalogue is not None:
            user, user_feats = ex["user"][:, 0], ex["user_feats"][:, 0]
            t_scores, rankable = self.catalogue(user, user_feats)
            s_scores = student.catalogue_scores(
                user, user_feats, self.catalogue.item_feats, self.catalogue.item_genres
            )
            parts["ranking_kd"] = catalogue_ranking_kd(
                s_scores, t_scores, rankable, temperature=c.temperature
            )
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


# ---------------------------------------------------------------- the training loop


def initial_shape(fm: FeatureMap, config: StudentConfig, teacher_params: int) -> StudentShape:
    """The unpruned student's widths: `config.shape`, or scaled to the teacher's size."""
    if config.initial == "shape":
        return config.shape
    lo, hi = 0.02, 64.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if shape_params(fm, config.shape.scaled(mid)) > teacher_params:
            hi = mid
        else:
            lo = mid
    return config.shape.scaled(lo)


def prune_schedule(config: StudentConfig) -> list[int]:
    """Epoch (0-based, pruning after it) of each pruning step."""
    if not config.prune or config.prune_steps <= 0:
        return []
    first = max(config.prune_start - 1, 0)
    last = max(config.epochs - config.finetune_epochs - 1, first)
    return [round(e) for e in np.linspace(first, last, config.prune_steps)]


def _l2(student: Student, ex: Mapping[str, Tensor]) -> Tensor:
    user = ex["user"].reshape(-1)
    item = ex["item"].reshape(-1)
    reg = student.user.tables[0](user).pow(2).sum() + student.item.tables[0](item).pow(2).sum()
    return reg / user.numel()


def distill_student(
    dataset: Dataset,
    train: Ratings,
    teacher: nn.Module,
    *,
    config: StudentConfig,
    pools: list[dict[str, Tensor]] | None = None,
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
    fm = dataset.feature_map
    teacher_params = count_params(teacher)
    target = round((1.0 - cfg.prune_ratio) * teacher_params)
    shape = initial_shape(fm, cfg, teacher_params)
    student = Student(fm, shape=shape, global_mean=float(train.rating.mean()))
    initial_params = count_params(student)
    if pools is None:
        pools = teacher_pools(dataset, train, teacher, config=cfg)
    t_repr = pools[0].get("t_repr")
    catalogue: CatalogueTargets | None = None
    if cfg.ranking_kd_scope == "catalogue":
        if CatalogueTargets.supports(teacher):
            catalogue = CatalogueTargets(teacher, dataset.tables, train)
        else:
            log.warning("the teacher has no two-tower scores: ranking distillation uses lists")
    loss = DistillLoss(
        cfg,
        student_repr=shape.rating_factor + shape.score_factor,
        teacher_repr=None if t_repr is None else int(t_repr.shape[-1]),
        teacher_repr_scale=1.0 if t_repr is None else float(t_repr.pow(2).mean()),
        catalogue=catalogue,
    )
    if t_repr is None and cfg.w_feature_kd > 0:
        log.warning("the teacher has no 'repr' output: feature distillation is off")

    n_rating = [shape.rating_factor]  # projection inputs: [rating factors, score factors]

    def on_prune(kind: str, keep: Tensor) -> None:
        if kind == "rating_factor":
            rest = torch.arange(n_rating[0], loss.proj.in_features)
            loss.prune_inputs(torch.cat([keep, rest]))
            n_rating[0] = int(keep.numel())
        elif kind == "score_factor":
            loss.prune_inputs(torch.cat([torch.arange(n_rating[0]), n_rating[0] + keep]))

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.Adam([*student.parameters(), *loss.proj.parameters()], lr=cfg.lr)

    schedule = prune_schedule(cfg)
    n_steps = len(schedule)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = optimizer()
    curves: dict[str, list[float]] = {"epoch": [], "params": [], "total": []}
    steps: list[dict[str, Any]] = []
    done_steps = 0
    for epoch in range(cfg.epochs):
        student.train()
        ex_all = pools[epoch % len(pools)]
        n = ex_all["user"].shape[0]
        perm = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        batches = range(0, n, cfg.lists_per_batch)
        bar = tqdm(
            batches,
            desc=f"student epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not cfg.progress,
        )
        for start in bar:
            idx = perm[start : start + cfg.lists_per_batch]
            ex = {k: v[idx] for k, v in ex_all.items()}
            parts = loss.components(student.heads, ex, student=student)
            means = {k: v.mean() for k, v in parts.items()}
            total = loss.total(means) + cfg.l2 * _l2(student, ex)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for k, v in means.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * idx.numel()
            sums["total"] = sums.get("total", 0.0) + float(total.detach()) * idx.numel()
        curves["epoch"].append(epoch + 1)
        for name, value in sums.items():
            curves.setdefault(name, []).append(value / n)
        while done_steps < n_steps and schedule[done_steps] == epoch:
            done_steps += 1
            initial = max(initial_params, target)
            step_target = round(initial * (target / initial) ** (done_steps / n_steps))
            imp_ex = {
                k: v[torch.randperm(n, generator=gen)[: cfg.importance_examples]]
                for k, v in ex_all.items()
            }
            imp_batches = [
                {k: v[s : s + cfg.lists_per_batch] for k, v in imp_ex.items()}
                for s in range(0, imp_ex["user"].shape[0], cfg.lists_per_batch)
            ]
            step: PruneStep = prune_step(
                student,
                target_params=step_target,
                method=cfg.method,
                loss_fn=loss.per_example,
                batches=imp_batches,
                generator=gen,
                min_units=cfg.min_units,
                on_prune=on_prune,
            )
            steps.append({"epoch": epoch + 1, "target": step_target, **asdict(step)})
            opt = optimizer()
        curves["params"].append(count_params(student))
        log.info(
            "student epoch %d/%d: loss %.4f, %d params",
            epoch + 1,
            cfg.epochs,
            curves["total"][-1],
            curves["params"][-1],
        )
    student.eval()
    info = {
        "config": cfg.to_json(),
        "teacher_params": teacher_params,
        "target_params": target if cfg.prune else initial_params,
        "initial_params": initial_params,
        "initial_shape": shape.as_dict(),
        "params": count_params(student),
        "shape": student.shape.as_dict(),
        "curves": curves,
        "prune_steps": steps,
        "seconds": time.perf_counter() - started,
    }
    return student, info
