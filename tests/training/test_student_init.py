"""The spectral start: the teacher's score matrix, factorised into the student's score path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datagen import write_ml100k
from tests.training.test_distill import quick_teacher
from training.data import Dataset, load_dataset, make_split
from training.distill import distill_student
from training.distill_config import StudentConfig
from training.kd_targets import item_tower_table
from training.models.ensemble import EnsembleTeacher
from training.models.student import Student, StudentShape
from training.student_init import factor_tiers, spectral_start, teacher_score_factors


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    folder = tmp_path_factory.mktemp("d")
    return load_dataset(write_ml100k(folder, n_users=25, n_items=40, n_ratings=400, seed=3))


def centred_scores(teacher: EnsembleTeacher, ds: Dataset) -> np.ndarray:
    """The teacher's [users + 1, items + 1] score matrix, each item column minus its mean
    over the real items (row 0 of the items is the unknown item)."""
    with torch.no_grad():
        users = torch.arange(ds.tables.user_feats.shape[0])
        u = teacher.user_tower(users, torch.as_tensor(ds.tables.user_feats)).double()
        v = item_tower_table(teacher, ds.tables).double()
    return (u @ (v - v[1:].mean(dim=0)).T).numpy()


def best_rank(matrix: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_factors_multiply_to_the_best_rank_k_approximation(dataset: Dataset, k: int) -> None:
    teacher = quick_teacher(dataset)
    users, items = teacher_score_factors(teacher, dataset.tables, k)
    assert users.shape == (dataset.tables.user_feats.shape[0], k)
    assert items.shape == (dataset.tables.item_feats.shape[0], k)
    want = best_rank(centred_scores(teacher, dataset), k)
    np.testing.assert_allclose((users @ items.T).double().numpy(), want, atol=2e-4, rtol=0)


def test_a_wider_request_stops_at_the_rank_of_the_scores(dataset: Dataset) -> None:
    teacher = quick_teacher(dataset)
    full = centred_scores(teacher, dataset)
    rank = int(np.linalg.matrix_rank(full, tol=1e-6 * np.abs(full).max()))
    users, items = teacher_score_factors(teacher, dataset.tables, rank + 50)
    assert users.shape[1] <= rank + 1  # at most the towers' rank, however many are asked
    np.testing.assert_allclose((users @ items.T).double().numpy(), full, atol=2e-4, rtol=0)


def test_a_student_started_spectrally_ranks_as_its_teacher(dataset: Dataset) -> None:
    """Its width covers the teacher's rank here, so every user's ranking is the teacher's;
    side fields and the hidden layer, which would blur it, start out of the score path."""
    teacher = quick_teacher(dataset)
    fm = dataset.feature_map
    torch.manual_seed(1)
    student = Student(fm, shape=StudentShape(user_score_dim=40, item_score_dim=40, score_factor=32))
    rank = spectral_start(student, teacher, dataset.tables)
    assert rank >= int(np.linalg.matrix_rank(centred_scores(teacher, dataset), tol=1e-4))
    users = np.arange(1, fm.n_users + 1)
    with torch.no_grad():
        got = student.score_matrix(users, dataset.tables)[:, 1:].numpy()
    want = centred_scores(teacher, dataset)[users, 1:]
    # Equal up to float rounding, so the same order wherever the teacher's scores differ.
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    np.testing.assert_array_equal(
        np.argsort(-got, axis=1, kind="stable")[:, :5],
        np.argsort(-want, axis=1, kind="stable")[:, :5],
    )


def test_the_spectral_start_leaves_the_rating_block_and_head_as_they_were(
    dataset: Dataset,
) -> None:
    teacher = quick_teacher(dataset)
    shape = StudentShape(user_score_dim=24, item_score_dim=24, score_factor=8)
    torch.manual_seed(3)
    student = Student(dataset.feature_map, shape=shape)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert spectral_start(student, teacher, dataset.tables) > 0
    for side in ("user", "item"):
        tower = getattr(student, side)
        for name in ("rating_out.weight", "rating_out.bias", "hidden.weight"):
            torch.testing.assert_close(
                student.state_dict()[f"{side}.{name}"], before[f"{side}.{name}"]
            )
        ids = before[f"{side}.tables.0.weight"]
        torch.testing.assert_close(tower.tables[0].weight[:, 24:], ids[:, 24:])
        assert not torch.equal(tower.tables[0].weight[:, :24], ids[:, :24])


def test_distillation_runs_from_either_start(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=20, n_items=30, n_ratings=300))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    for start in ("spectral", "random"):
        cfg = StudentConfig(quick=True, progress=False, prune_ratio=0.5, score_init=start)
        student, info = distill_student(ds, split.train, teacher, config=cfg)
        assert info["config"]["score_init"] == start
        assert torch.isfinite(student.score_matrix(np.arange(1, 21), ds.tables)).all()


def test_a_held_score_path_stays_the_factorisation_while_the_rest_trains(
    tmp_path: Path,
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=20, n_items=30, n_ratings=300))
    train = make_split(ds, split="u1").train
    teacher = quick_teacher(ds)
    cfg = StudentConfig(
        quick=True, progress=False, prune=False, score_rating="distil", hold_score_path=True
    )
    student, _ = distill_student(ds, train, teacher, config=cfg)
    torch.manual_seed(cfg.seed)  # as distill_student builds its student
    fresh = Student(ds.feature_map, shape=student.shape)
    spectral_start(fresh, teacher, ds.tables)
    for (got, i), (want, j) in zip(student.score_path(), fresh.score_path(), strict=True):
        torch.testing.assert_close(got[i], want[j])
    assert not torch.allclose(student.user.rating_out.weight, fresh.user.rating_out.weight)
    # Without holding it, distillation moves the score path off the factorisation.
    moved, _ = distill_student(ds, train, teacher, config=replace(cfg, hold_score_path=False))
    assert not all(
        torch.allclose(a[i], b[j])
        for (a, i), (b, j) in zip(moved.score_path(), fresh.score_path(), strict=True)
    )


def test_pruning_a_held_factorisation_takes_unread_dimensions_then_its_smallest_directions(
    dataset: Dataset,
) -> None:
    teacher = quick_teacher(dataset)
    torch.manual_seed(4)
    shape = StudentShape(user_score_dim=10, item_score_dim=10, score_factor=6)
    student = Student(dataset.feature_map, shape=shape)
    k = spectral_start(student, teacher, dataset.tables)
    assert k == 6
    tiers = factor_tiers(student)
    # Dimensions 0..5 pass factors 0..5 through (largest singular value first); 6..9 are
    # read by the rating head alone.
    assert tiers["user_score_dim"].tolist() == [6, 5, 4, 3, 2, 1, 0, 0, 0, 0]
    assert tiers["score_factor"].tolist() == [6, 5, 4, 3, 2, 1]
    # Pruning factor 1 and dimension 0 keeps the order of the rest.
    student.prune("score_factor", torch.tensor([0, 2, 3, 4, 5]))
    student.prune("item_score_dim", torch.arange(1, 10))
    tiers = factor_tiers(student)
    assert tiers["score_factor"].tolist() == [5, 4, 3, 2, 1]
    assert tiers["user_score_dim"].tolist() == [5, 0, 4, 3, 2, 1, 0, 0, 0, 0]
    assert tiers["item_score_dim"].tolist() == [0, 4, 3, 2, 1, 0, 0, 0, 0]
