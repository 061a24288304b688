"""A spectral start for the student's score path: the teacher's score matrix, factorised.

Why: the teacher ranks by an inner product of tower vectors, so its score matrix is
`U V^T` (users x items, through D-dimensional towers) and its best rank-k approximation
(Eckart-Young) is a pair of factor tables of (users + items) x k numbers, the shape of the
student's id embeddings. The best rank-16 factorisation keeps about 0.92 of the teacher's
top 10 where distillation from a random start kept about 0.7 (bench/results/fidelity.md).
So the student starts where its score head would like to end: the first k dimensions of
its score block hold the factors and its score projections pass them through; the other
dimensions, the hidden layer and the rating head start as before. With
`StudentConfig.hold_score_path` (the default) distillation keeps the factorisation as it
is and pruning can only truncate it; otherwise distillation trains it like the rest.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from training.features import FeatureTables
from training.kd_targets import CatalogueTargets, item_tower_table
from training.models.student import Student, Tower

log = logging.getLogger(__name__)

# Gram eigenvalues below this share of the largest are treated as zero (a constant or
# duplicated tower column leaves the Gram matrix singular).
_RANK_TOL = 1e-10


def _basis(x: Tensor) -> tuple[Tensor, Tensor]:
    """(W [D, r], R [r, D]) with x = (x W) R and x W orthonormal (x: [N, D]): a thin QR
    of x from its Gram matrix, without the [N, r] factor ever stored."""
    vals, vecs = torch.linalg.eigh(x.T @ x)  # [D], [D, D]
    keep = vals > _RANK_TOL * vals.max().clamp(min=1e-300)
    vals, vecs = vals[keep], vecs[:, keep]
    return vecs / vals.sqrt(), vals.sqrt()[:, None] * vecs.T


@torch.no_grad()
def teacher_score_factors(
    teacher: nn.Module, tables: FeatureTables, k: int
) -> tuple[Tensor, Tensor]:
    """Users [Nu + 1, k] and items [M + 1, k] whose products are the best rank-k
    approximation of the teacher's item-centred score matrix.

    Items are centred because what distillation matches per user is a softmax over items,
    which ignores any per-user constant. Computed from the towers' Gram matrices (D x D),
    so the users x items matrix is never formed: memory stays linear in the catalogue.
    """
    was_training = teacher.training
    teacher.eval()
    users = torch.arange(tables.user_feats.shape[0])
    u = teacher.user_tower(users, torch.as_tensor(tables.user_feats)).double()  # type: ignore[operator]
    teacher.train(was_training)
    v = item_tower_table(teacher, tables).double()  # [M + 1, D]
    v = v - v[1:].mean(dim=0)  # row 0 is the unknown item, never ranked
    (wu, ru), (wv, rv) = _basis(u), _basis(v)
    # u v^T = (u wu) (ru rv^T) (v wv)^T: the SVD of the small core is that of u v^T.
    a, s, bt = torch.linalg.svd(ru @ rv.T, full_matrices=False)  # core [ru, rv]
    k = min(k, s.shape[0])
    root = s[:k].sqrt()
    user_factors = (u @ (wu @ a[:, :k])) * root  # [Nu + 1, k]
    item_factors = (v @ (wv @ bt[:k].T)) * root  # [M + 1, k]
    return user_factors.float(), item_factors.float()


def _pass_through(tower: Tower, factors: Tensor) -> None:
    """Score-block dims [0, k): the id table's are `factors`, the side fields' zero; the
    score projection copies them unchanged."""
    k = factors.shape[1]
    ids, *fields = tower.embeddings()
    ids.weight[:, :k] = factors
    # Side fields add to the same dimensions, and their random start would blur the
    # factorised scores: they start at zero there (and learn, unless the path is held).
    for table in fields:
        table.weight[:, :k] = 0.0
    if tower.genre is not None:
        tower.genre.weight[:k] = 0.0
    tower.score_out.weight.zero_()
    tower.score_out.bias.zero_()
    tower.score_out.weight[:k, :k] = torch.eye(k)


@torch.no_grad()
def spectral_start(student: Student, teacher: nn.Module, tables: FeatureTables) -> int:
    """Puts the teacher's score factorisation into `student`'s score path; returns its rank
    (0, student untouched, for a teacher without two towers)."""
    if not CatalogueTargets.supports(teacher):
        log.warning("the teacher has no towers to factorise: the student starts at random")
        return 0
    shape = student.shape
    k = min(shape.score_factor, shape.user_score_dim, shape.item_score_dim)
    user_factors, item_factors = teacher_score_factors(teacher, tables, k)
    k = user_factors.shape[1]
    _pass_through(student.user, user_factors)
    _pass_through(student.item, item_factors)
    student.item_score_bias.weight.zero_()
    log.info("student score path starts at the teacher's rank-%d score factorisation", k)
    return k


@torch.no_grad()
def factor_tiers(student: Student) -> dict[str, Tensor]:
    """Pruning tiers (`prune.select_keep`) of a held factorisation: 0 for score dimensions
    and factors outside it, else higher for larger singular values, so that pruning takes
    the dimensions the score head does not read first and then the factorisation's
    smallest directions. Left to importance, pruning kept a dimension that only the rating
    head reads over one of the factorisation's, and that run's held-back NDCG@10 fell
    (bench/results/student-split/). Read from the score projections, which a held path
    keeps at the spectral start's pass-through: column j copies factor row(j)."""
    n = student.user.score_out.out_features

    def dims(tower: Tower) -> Tensor:
        weight = tower.score_out.weight.abs()  # [Ks, Ds]
        tier = n - weight.argmax(dim=0)  # [Ds]: rows are in singular-value order
        return torch.where(weight.sum(dim=0) > 0, tier, 0)

    rows = student.user.score_out.weight.abs().sum(dim=1) > 0  # [Ks]
    factors = torch.where(rows, n - torch.arange(n), 0)
    return {
        "user_score_dim": dims(student.user),
        "item_score_dim": dims(student.item),
        "score_factor": factors,
    }
