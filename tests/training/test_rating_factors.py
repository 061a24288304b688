"""A separable rating head's factored form rates pairs as the model and its graph do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contract.rating_factors import rating_factor_files
from training.data import Dataset, load_dataset
from training.export import ExportError, export_onnx, export_rating_graph
from training.features import Batch, make_batch
from training.models.base import to_inputs
from training.models.student import Student, StudentShape
from training.models.xdeepfm import XDeepFM
from training.rating_factors import export_rating_factors, factor_matrices


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


def _student(ds: Dataset) -> Student:
    torch.manual_seed(0)
    shape = StudentShape(
        user_score_dim=8,
        user_rating_dim=4,
        item_score_dim=8,
        item_rating_dim=4,
        user_hidden=6,
        item_hidden=6,
        rating_factor=4,
        score_factor=5,
    )
    student = Student(ds.feature_map, shape=shape, global_mean=3.6)
    with torch.no_grad():  # biases away from their zero start, so that they are tested
        student.user_bias.weight.normal_(0.0, 0.3)
        student.item_bias.weight.normal_(0.0, 0.3)
    return student.eval()


def _pairs(ds: Dataset, n: int, *, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    user = rng.integers(1, ds.feature_map.n_users + 1, n)
    item = rng.integers(1, ds.feature_map.n_items + 1, n)
    return make_batch(ds.tables, user, item)


def test_the_factors_give_the_students_unclipped_rating(dataset: Dataset) -> None:
    student = _student(dataset)
    factors = factor_matrices(student, dataset.tables)
    fm = dataset.feature_map
    assert factors.users.shape[0] == fm.n_users + 1
    assert factors.items.shape[0] == fm.n_items
    assert factors.users.shape[1] == factors.items.shape[1] == 4 + 2
    batch = _pairs(dataset, 300, seed=1)
    with torch.no_grad():
        want = student.heads(*to_inputs(batch))["rating"].numpy()
    got = factors.rate(batch.user, batch.item)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_export_checks_the_factors_against_the_rating_graph(
    dataset: Dataset, tmp_path: Path
) -> None:
    student = _student(dataset)
    pair = tmp_path / "student.onnx"
    export_onnx(student, dataset.feature_map, pair, metadata={"bundle_version": "v"})
    graph = tmp_path / "student.rating.onnx"
    export_rating_graph(pair, graph, dataset.feature_map)
    art = export_rating_factors(student, dataset.tables, graph, out_dir=tmp_path, stem="student")
    assert art is not None
    assert art.parity_max_abs_diff <= 1e-4
    assert art.users.name == rating_factor_files("student")["users"]
    users, items = np.load(art.users), np.load(art.items)
    assert users.dtype == items.dtype == np.float32
    assert art.offset == pytest.approx(3.6)
    # A student changed after its graph was exported no longer matches it: export refuses.
    with torch.no_grad():
        student.item_bias.weight.add_(0.5)
    with pytest.raises(ExportError, match="differ from the rating graph"):
        export_rating_factors(student, dataset.tables, graph, out_dir=tmp_path, stem="student")


def test_a_model_without_a_separable_rating_gets_no_factors(
    dataset: Dataset, tmp_path: Path
) -> None:
    model = XDeepFM(dataset.feature_map, dim=4, cin_layers=(4,), dnn_layers=(8,), score_dim=3)
    graph = tmp_path / "unused.onnx"
    assert export_rating_factors(model, dataset.tables, graph, out_dir=tmp_path, stem="x") is None
    assert not any(tmp_path.iterdir())
