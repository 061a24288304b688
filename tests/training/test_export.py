"""ONNX export, parity with PyTorch, INT8 quantisation and latency on generated data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from contract.features import FeatureMap
from contract.session import open_session
from contract.signature import INPUT_NAMES, OUTPUT_NAMES, RATING_OUTPUTS
from training import export
from training.data import Dataset, load_dataset
from training.models.base import TwoHeadModel
from training.models.mf import BiasedMF
from training.models.student import Student, StudentShape
from training.towers import export_towers, ort_tower_scorer


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k, dataset="ml-100k")


def _student(fm: FeatureMap, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    model = Student(fm, shape=StudentShape().scaled(0.25), global_mean=3.5)
    # Non-zero biases so that every part of the graph contributes to the outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("kind", ["student", "mf"])
def test_export_signature_metadata_and_parity(dataset: Dataset, tmp_path: Path, kind: str) -> None:
    fm = dataset.feature_map
    model: TwoHeadModel = _student(fm) if kind == "student" else BiasedMF(fm, dim=8, score_dim=8)
    path = export.export_onnx(model, fm, tmp_path / "m.onnx", metadata={"bundle_version": "v-1"})

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert export.graph_opset(path) >= 17
    assert export.read_metadata(path) == {"bundle_version": "v-1", "feature_schema_version": "1"}

    session = export.ort_session(path)
    inputs = session.get_inputs()
    assert tuple(i.name for i in inputs) == INPUT_NAMES
    assert tuple(o.name for o in session.get_outputs()) == OUTPUT_NAMES
    # Dynamic batch axis on every input and output; fixed feature widths.
    assert all(isinstance(i.shape[0], str) for i in inputs)
    assert inputs[2].shape[1] == len(fm.user_fields)
    assert inputs[4].shape[1] == fm.n_genres
    assert [i.type for i in inputs] == ["tensor(int64)"] * 4 + ["tensor(float)"]

    parity = export.check_parity(model, path, fm, batch_sizes=(1, 3, 100, 1000))
    assert parity.max_abs_diff <= export.PARITY_ATOL


@pytest.mark.parametrize("kind", ["student", "int8"])
def test_rating_graph_is_the_pair_graph_without_the_score(
    dataset: Dataset, tmp_path: Path, kind: str
) -> None:
    fm = dataset.feature_map
    pair = export.export_onnx(
        _student(fm), fm, tmp_path / "m.onnx", metadata={"bundle_version": "v-1", "model": "m"}
    )
    if kind == "int8":
        pair = export.quantize_int8(pair, tmp_path / "m.int8.onnx")
    target = tmp_path / "m.rating.onnx"

    parity = export.export_rating_graph(pair, target, fm)

    assert parity <= export.PARITY_ATOL
    cut, whole = onnx.load(str(target)), onnx.load(str(pair))
    onnx.checker.check_model(cut, full_check=True)
    assert [o.name for o in cut.graph.output] == ["rating"]
    assert [i.name for i in cut.graph.input] == list(INPUT_NAMES)
    assert len(cut.graph.node) < len(whole.graph.node)
    assert export.read_metadata(target)["model"] == "m.rating"
    assert export.read_metadata(target)["bundle_version"] == "v-1"
    batch = export.random_batch(fm, 50, rng=np.random.default_rng(3))
    want, _ = export.ort_predict(export.ort_session(pair), batch)
    session = open_session(target, needs=RATING_OUTPUTS)
    (got,) = session.run(["rating"], export.ort_feed(batch))
    np.testing.assert_array_equal(got, want)


def test_mf_ignoring_side_features_still_takes_all_inputs(dataset: Dataset, tmp_path: Path) -> None:
    # BiasedMF reads only user and item; the tracer would drop the other three inputs.
    fm = dataset.feature_map
    path = export.export_onnx(BiasedMF(fm), fm, tmp_path / "mf.onnx", metadata={})
    batch = export.random_batch(fm, 5, rng=np.random.default_rng(1))
    rating, score = export.ort_predict(export.ort_session(path), batch)
    assert rating.shape == (5,) and score.shape == (5,)
    assert np.all((rating >= 1.0) & (rating <= 5.0))


def test_random_batch_is_valid_and_covers_unknown_index(dataset: Dataset) -> None:
    fm = dataset.feature_map
    batch = export.random_batch(fm, 4000, rng=np.random.default_rng(0))
    assert batch.user.min() == 0 and batch.user.max() == fm.n_users
    assert batch.item.min() == 0 and batch.item.max() == fm.n_items
    for j, vocab in enumerate(fm.user_field_vocabs):
        assert batch.user_feats[:, j].min() >= 0 and batch.user_feats[:, j].max() < vocab
    assert set(np.unique(batch.item_genres)) <= {0.0, 1.0}


class _Drifting(TwoHeadModel):
    """Exports one function, then behaves differently in PyTorch: parity must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(1))

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        base = 3.0 + self.offset + 0.001 * (user + item).float()  # [B]
        return {"rating": base, "score": base}


def test_parity_failure_raises_with_numbers(dataset: Dataset, tmp_path: Path) -> None:
    fm = dataset.feature_map
    model = _Drifting()
    path = export.export_onnx(model, fm, tmp_path / "d.onnx", metadata={})
    assert export.check_parity(model, path, fm).max_abs_diff <= export.PARITY_ATOL
    with torch.no_grad():
        model.offset.fill_(0.01)
    with pytest.raises(export.ExportError, match=r"differs from PyTorch by 0\.01"):
        export.check_parity(model, path, fm)


def test_int8_student_is_smaller_close_and_valid(dataset: Dataset, tmp_path: Path) -> None:
    fm = dataset.feature_map
    model = _student(fm)
    fp32 = export.export_onnx(model, fm, tmp_path / "s.onnx", metadata={"bundle_version": "x"})
    int8 = export.quantize_int8(fp32, tmp_path / "s.int8.onnx")
    assert int8.stat().st_size < fp32.stat().st_size
    session = export.ort_session(int8)
    assert tuple(i.name for i in session.get_inputs()) == INPUT_NAMES
    assert export.read_metadata(int8)["bundle_version"] == "x"
    drift = export.compare_onnx(fp32, int8, fm)
    # Quantisation error is small on the rating scale but not zero (it really quantised).
    assert 0.0 < drift < 0.5


def test_int8_quantises_the_tables_and_leaves_the_layers_fp32(
    dataset: Dataset, tmp_path: Path
) -> None:
    """The default covers Gather only: no activation quantised per run; onnxruntime's
    default set (ops=None) quantises the MatMul layers too."""
    fm = dataset.feature_map
    fp32 = export.export_onnx(_student(fm), fm, tmp_path / "s.onnx", metadata={})

    def op_types(path: Path) -> set[str]:
        return {node.op_type for node in onnx.load(str(path)).graph.node}

    tables = op_types(export.quantize_int8(fp32, tmp_path / "tables.onnx"))
    default = op_types(export.quantize_int8(fp32, tmp_path / "default.onnx", ops=None))
    assert "DequantizeLinear" in tables and "DynamicQuantizeLinear" not in tables
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= default


def test_int8_acceptance_rule() -> None:
    ref = {"rmse": 1.0, "ndcg@10": 0.40}
    assert export.int8_acceptable({"rmse": 1.009, "ndcg@10": 0.389}, ref)[0]
    ok, why = export.int8_acceptable({"rmse": 1.02, "ndcg@10": 0.40}, ref)
    assert not ok and "RMSE" in why
    ok, why = export.int8_acceptable({"rmse": 1.0, "ndcg@10": 0.38}, ref)
    assert not ok and "NDCG" in why
    assert not export.int8_acceptable({"rmse": float("nan"), "ndcg@10": 0.4}, ref)[0]


def test_latency_is_positive_and_scales_with_catalogue(dataset: Dataset, tmp_path: Path) -> None:
    fm = dataset.feature_map
    path = export.export_onnx(_student(fm), fm, tmp_path / "s.onnx", metadata={})
    latency = export.ort_latency_ms(path, fm, dataset.tables, threads=1, runs=5)
    assert 0.0 < latency < 1000.0


def test_latency_scores_a_large_catalogue_in_bounded_runs(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every item once per timed pass, never more than LATENCY_CHUNK rows per session run."""
    fm = dataset.feature_map
    path = export.export_onnx(_student(fm), fm, tmp_path / "s.onnx", metadata={})
    monkeypatch.setattr(export, "LATENCY_CHUNK", 64)
    sizes: list[int] = []
    real_session = export.ort_session

    def recording(*args: Any, **kwargs: Any) -> Any:
        session = real_session(*args, **kwargs)
        run = session.run

        def counted(outputs: Any, feed: dict[str, np.ndarray]) -> Any:
            sizes.append(len(feed["item"]))
            return run(outputs, feed)

        session.run = counted
        return session

    monkeypatch.setattr(export, "ort_session", recording)
    assert export.ort_latency_ms(path, fm, dataset.tables, threads=1, runs=2) > 0.0
    assert max(sizes) <= 64
    assert sum(sizes) == 5 * fm.n_items  # three warm-up passes and two timed ones


def test_tower_scorer_matches_pairwise_scores(dataset: Dataset, tmp_path: Path) -> None:
    """The pipeline ranks exported models with tower x item matrix; it must equal the pair
    graph's own score for every catalogue item."""
    fm = dataset.feature_map
    model = _student(fm)
    path = export.export_onnx(model, fm, tmp_path / "s.onnx", metadata={})
    art = export_towers(model, dataset.tables, fm, out_dir=tmp_path, stem="s", metadata={})
    users = np.array([1, 5, 0], dtype=np.int64)
    matrix = ort_tower_scorer(art.user_tower, art.items, dataset.tables)(users)
    assert matrix.shape == (3, fm.n_items)
    _, pair = export.ort_pair_predict(
        export.ort_session(path),
        dataset.tables,
        np.full(fm.n_items, 5, np.int64),
        np.arange(1, fm.n_items + 1, dtype=np.int64),
    )
    np.testing.assert_allclose(matrix[1], pair, rtol=0, atol=1e-4)
