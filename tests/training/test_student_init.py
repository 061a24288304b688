"""The spectral start: the teacher's score matrix, factorised into the student's score path."""

from __future__ import annotations

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
from training.student_init import spectral_start, teacher_score_factors


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
    student = Student(fm, shape=StudentShape(user_dim=40, item_dim=40, score_factor=32))
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


def test_the_rating_head_starts_off_the_score_dimensions(dataset: Dataset) -> None:
    teacher = quick_teacher(dataset)
    shape = StudentShape(user_dim=24, item_dim=24, score_factor=8)
    student = Student(dataset.feature_map, shape=shape)
    rank = spectral_start(student, teacher, dataset.tables)
    for tower in (student.user, student.item):
        hidden = tower.hidden.out_features
        assert not tower.rating_out.weight[:, hidden : hidden + rank].any()
        assert tower.rating_out.weight[:, hidden + rank :].abs().sum() > 0


def test_distillation_runs_from_either_start(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=20, n_items=30, n_ratings=300))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    for start in ("spectral", "random"):
        cfg = StudentConfig(quick=True, progress=False, prune_ratio=0.5, score_init=start)
        student, info = distill_student(ds, split.train, teacher, config=cfg)
        assert info["config"]["score_init"] == start
        assert torch.isfinite(student.score_matrix(np.arange(1, 21), ds.tables)).all()
