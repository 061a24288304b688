"""Forward/backward shapes of every teacher model, and the ensemble as one ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import export
from training.data import Dataset, load_dataset
from training.features import make_batch
from training.models.autoint import AutoInt
from training.models.ensemble import DEFAULT_WEIGHTS, EnsembleTeacher
from training.models.mf import BiasedMF, TowerScoring
from training.models.xdeepfm import XDeepFM


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


def _models(ds: Dataset) -> dict[str, TowerScoring]:
    fm = ds.feature_map
    torch.manual_seed(0)
    return {
        "mf": BiasedMF(fm, dim=8, score_dim=6),
        "xdeepfm": XDeepFM(
            fm, dim=4, cin_layers=(5, 3), dnn_layers=(7,), score_dim=6, tower_layers=(9,)
        ),
        "autoint": AutoInt(fm, dim=4, layers=2, heads=2, d_head=3, score_dim=6),
    }


def _inputs(ds: Dataset, batch: int = 7) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(0)
    users = rng.integers(0, ds.feature_map.n_users + 1, batch)
    items = rng.integers(0, ds.feature_map.n_items + 1, batch)
    b = make_batch(ds.tables, users, items)
    return (
        torch.as_tensor(b.user),
        torch.as_tensor(b.item),
        torch.as_tensor(b.user_feats),
        torch.as_tensor(b.item_feats),
        torch.as_tensor(b.item_genres),
    )


@pytest.mark.parametrize("name", ["mf", "xdeepfm", "autoint"])
def test_component_shapes_and_gradients(dataset: Dataset, name: str) -> None:
    model = _models(dataset)[name]
    inputs = _inputs(dataset)
    out = model.heads(*inputs)
    assert out["rating"].shape == (7,) and out["score"].shape == (7,)
    rating, score = model(*inputs)
    assert torch.all((rating >= 1.0) & (rating <= 5.0))
    # The score head is the tower dot product, so catalogue scoring agrees with it.
    matrix = model.score_matrix(inputs[0].numpy(), dataset.tables)
    assert matrix.shape == (7, dataset.feature_map.n_items + 1)
    torch.testing.assert_close(matrix[torch.arange(7), inputs[1]], score, rtol=1e-4, atol=1e-5)
    loss = out["rating"].pow(2).mean() + out["score"].pow(2).mean()
    loss = loss + model.regularizer(*inputs).mean()
    loss.backward()
    grads = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert any(n.startswith(model.tower_prefixes) for n in grads)
    assert any(not n.startswith(model.tower_prefixes) for n in grads)


def test_autoint_exposes_its_pair_representation(dataset: Dataset) -> None:
    model = _models(dataset)["autoint"]
    rep = model.heads(*_inputs(dataset))["repr"]
    assert isinstance(model, AutoInt)
    assert rep.shape == (7, model.repr_dim)


def test_ensemble_blends_standardised_component_outputs(dataset: Dataset) -> None:
    parts = _models(dataset)
    teacher = EnsembleTeacher(parts["mf"], parts["xdeepfm"], parts["autoint"]).eval()
    users = np.arange(1, dataset.feature_map.n_users + 1)
    teacher.standardise(users, dataset.tables)
    teacher.set_weights(rating=[0.5, 0.3, 0.1], rating_bias=0.2, score=[0.2, 0.3, 0.5])
    inputs = _inputs(dataset)
    with torch.no_grad():
        out = teacher.heads(*inputs)
        comps = [p.heads(*inputs) for p in parts.values()]
        expected_rating = 0.2 + sum(
            w * c["rating"].clamp(1, 5) for w, c in zip([0.5, 0.3, 0.1], comps, strict=True)
        )
        z = [
            (c["score"] - teacher.score_mean[k]) / teacher.score_std[k] for k, c in enumerate(comps)
        ]
        expected_score = 0.2 * z[0] + 0.3 * z[1] + 0.5 * z[2]
        matrix = teacher.score_matrix(inputs[0].numpy(), dataset.tables)
    torch.testing.assert_close(out["rating"], expected_rating)
    torch.testing.assert_close(out["score"], expected_score, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        matrix[torch.arange(7), inputs[1]], expected_score, rtol=1e-4, atol=1e-4
    )
    assert out["repr"].shape[0] == 7


def test_ensemble_defaults_are_the_design_weights(dataset: Dataset) -> None:
    parts = _models(dataset)
    teacher = EnsembleTeacher(parts["mf"], parts["xdeepfm"], parts["autoint"])
    assert teacher.rating_weights.tolist() == pytest.approx(list(DEFAULT_WEIGHTS))
    assert teacher.score_weights.tolist() == pytest.approx(list(DEFAULT_WEIGHTS))
    assert "rating_weights" in teacher.state_dict()


def test_ensemble_exports_as_one_onnx_graph(dataset: Dataset, tmp_path: Path) -> None:
    parts = _models(dataset)
    teacher = EnsembleTeacher(parts["mf"], parts["xdeepfm"], parts["autoint"]).eval()
    teacher.standardise(np.arange(1, 10), dataset.tables)
    fm = dataset.feature_map
    path = export.export_onnx(teacher, fm, tmp_path / "teacher.onnx", metadata={})
    batch = export.random_batch(fm, 11, rng=np.random.default_rng(3))
    rating, score = export.ort_predict(export.ort_session(path), batch)
    with torch.no_grad():
        ref_rating, ref_score = teacher(
            torch.as_tensor(batch.user),
            torch.as_tensor(batch.item),
            torch.as_tensor(batch.user_feats),
            torch.as_tensor(batch.item_feats),
            torch.as_tensor(batch.item_genres),
        )
    np.testing.assert_allclose(rating, ref_rating.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, ref_score.numpy(), rtol=1e-4, atol=1e-4)
