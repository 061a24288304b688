"""ONNX Runtime sessions: provider choice, signature checks, top-k selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from app.inference import CPU, ModelLoadError, ModelRunner, choose_providers
from app.retrieval import top_k
from tests.app.conftest import Reference


def test_providers_are_filtered_and_cpu_closes_the_list() -> None:
    available = ort.get_available_providers()
    chosen = choose_providers(["NoSuchExecutionProvider", "CUDAExecutionProvider", CPU])
    assert "NoSuchExecutionProvider" not in chosen
    assert chosen[-1] == CPU
    assert all(p in available for p in chosen)
    assert choose_providers([]) == [CPU]


def test_runner_reports_the_provider_that_really_runs(reference: Reference) -> None:
    providers = choose_providers(["CUDAExecutionProvider", CPU])
    runner = ModelRunner(reference.dir / "teacher.onnx", name="teacher", providers=providers)
    assert runner.provider == runner.session.get_providers()[0]
    assert runner.provider in providers


def _rate(
    runner: ModelRunner, reference: Reference, users: np.ndarray, items: np.ndarray
) -> np.ndarray:
    return runner.run(
        user=users,
        item=items,
        user_feats=reference.user_feats[users],
        item_feats=reference.item_feats[items],
        item_genres=reference.item_genres[items],
    )


def test_runner_output_matches_a_plain_session(reference: Reference) -> None:
    runner = ModelRunner(reference.dir / "student.onnx", name="student", providers=[CPU])
    users, items = np.array([1, 2, 0]), np.array([3, 1, 2])
    prediction = _rate(runner, reference, users, items)
    rating, _ = reference.run("student", users, items)
    np.testing.assert_allclose(prediction, rating, rtol=1e-6)
    assert ((prediction >= 1) & (prediction <= 5)).all()


def test_runner_rates_with_the_rating_graph_when_given(reference: Reference) -> None:
    entry = reference.manifest["models"]["teacher"]
    runner = ModelRunner(
        reference.dir / entry["file"],
        name="teacher",
        providers=[CPU],
        rating_graph=reference.dir / entry["rating_graph"]["file"],
    )
    assert (runner.file, runner.graph_file) == ("teacher.onnx", "teacher.rating.onnx")
    assert [o.name for o in runner.session.get_outputs()] == ["rating"]
    users, items = np.array([1, 2, 3, 0]), np.array([4, 4, 1, 2])
    prediction = _rate(runner, reference, users, items)
    rating, _ = reference.run("teacher", users, items)
    np.testing.assert_allclose(prediction, rating, rtol=1e-6)
    # A graph without the contract signature (here the user tower) is refused.
    with pytest.raises(ModelLoadError, match="contract"):
        ModelRunner(
            reference.dir / entry["file"],
            name="teacher",
            providers=[CPU],
            rating_graph=reference.dir / entry["retrieval"]["user_tower"]["file"],
        )


def _write_model(path: Path, inputs: list[tuple[str, int]], outputs: list[str]) -> Path:
    graph_inputs = [helper.make_tensor_value_info(n, t, ["B"]) for n, t in inputs]
    first = inputs[0][0]
    nodes = [helper.make_node("Cast", [first], [out], to=TensorProto.FLOAT) for out in outputs]
    graph = helper.make_graph(
        nodes,
        "g",
        graph_inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B"]) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_wrong_signature_is_refused(tmp_path: Path) -> None:
    wrong_names = _write_model(
        tmp_path / "a.onnx", [("users", TensorProto.INT64)], ["rating", "score"]
    )
    with pytest.raises(ModelLoadError, match="contract"):
        ModelRunner(wrong_names, name="a", providers=[CPU])
    wrong_type = _write_model(
        tmp_path / "b.onnx",
        [("user", TensorProto.INT32), ("item", TensorProto.INT64)],
        ["rating", "score"],
    )
    with pytest.raises(ModelLoadError, match="contract"):
        ModelRunner(wrong_type, name="b", providers=[CPU])
    no_score = _write_model(
        tmp_path / "c.onnx", [("user", TensorProto.INT64), ("item", TensorProto.INT64)], ["rating"]
    )
    with pytest.raises(ModelLoadError, match="lacks outputs"):
        ModelRunner(no_score, name="c", providers=[CPU])
    garbage = tmp_path / "d.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        ModelRunner(garbage, name="d", providers=[CPU])


def test_a_model_reading_fewer_inputs_is_fed_only_those(tmp_path: Path) -> None:
    path = _write_model(
        tmp_path / "m.onnx",
        [("user", TensorProto.INT64), ("item", TensorProto.INT64)],
        ["rating", "score"],
    )
    runner = ModelRunner(path, name="m", providers=[CPU])
    assert runner.input_names == ("user", "item")
    out = runner.run(
        user=np.array([3, 9]),
        item=np.array([1, 1]),
        user_feats=np.zeros((2, 1), dtype=np.int64),
        item_feats=np.zeros((2, 1), dtype=np.int64),
        item_genres=np.zeros((2, 1), dtype=np.float32),
    )
    np.testing.assert_array_equal(out, [3, 5])  # clipped to [1, 5]


def test_ratings_are_clipped_to_the_bundles_scale(tmp_path: Path) -> None:
    path = _write_model(
        tmp_path / "m.onnx",
        [("user", TensorProto.INT64), ("item", TensorProto.INT64)],
        ["rating", "score"],
    )
    runner = ModelRunner(path, name="m", providers=[CPU], rating_scale=(0.5, 5.0))
    out = runner.run(
        user=np.array([0, 3, 9]),
        item=np.array([1, 1, 1]),
        user_feats=np.zeros((3, 1), dtype=np.int64),
        item_feats=np.zeros((3, 1), dtype=np.int64),
        item_genres=np.zeros((3, 1), dtype=np.float32),
    )
    np.testing.assert_array_equal(out, [0.5, 3, 5])


def test_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        score = rng.normal(size=int(rng.integers(1, 200))).astype(np.float32)
        k = int(rng.integers(1, 120))
        exclude = rng.choice(score.size, int(rng.integers(0, score.size)), replace=False)
        expected = [p for p in np.argsort(-score, kind="stable") if p not in set(exclude)][:k]
        assert top_k(score.copy(), k, exclude=exclude.astype(np.int64)).tolist() == expected


def test_top_k_returns_fewer_when_everything_is_excluded() -> None:
    score = np.array([0.3, 0.1, 0.2], dtype=np.float32)
    assert top_k(score.copy(), 10).tolist() == [0, 2, 1]
    assert top_k(score.copy(), 2, exclude=np.array([0, 1, 2])).tolist() == []
