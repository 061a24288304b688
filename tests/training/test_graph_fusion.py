"""Fused field lookups (training/graph_fusion.py) and the Attention node of exported graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract.features import FeatureMap
from contract.session import graph_inputs, open_session, run_rating
from contract.signature import RATING_OUTPUTS
from training import checkpoint, export
from training.graph_fusion import fuse_field_lookups
from training.models.layers import InteractingLayer

_ROWS, _GENRES, _FIELDS = 12, 4, 3


def _lookup(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], name: str, index: str, dim: int
) -> str:
    """A FieldEmbedding as the exporter writes it: Concat(Gather, Unsqueeze(MatMul))."""
    rng = np.random.default_rng(len(inits))
    for suffix, rows in (("t", _ROWS), ("g", _GENRES)):
        values = rng.standard_normal((rows, dim)).astype(np.float32)
        inits.append(numpy_helper.from_array(values, f"{name}.{suffix}"))
    nodes += [
        helper.make_node("Gather", [f"{name}.t", index], [f"{name}.rows"]),
        helper.make_node("MatMul", ["bag", f"{name}.g"], [f"{name}.bag"]),
        helper.make_node("Constant", [], [f"{name}.axes"], value=numpy_helper.from_array(
            np.array([1], np.int64), f"{name}.axes_value")),
        helper.make_node("Unsqueeze", [f"{name}.bag", f"{name}.axes"], [f"{name}.bag3"]),
        helper.make_node("Concat", [f"{name}.rows", f"{name}.bag3"], [name], axis=1),
    ]  # fmt: skip
    return name


def _graph(*, shared_gather: bool) -> onnx.ModelProto:
    """Two lookups whose indices are separate but equal nodes (one through the Identity the
    exporter writes for a shared constant), one over another index, and with
    `shared_gather` a third on the same index whose Gather output has a second reader."""
    offsets = numpy_helper.from_array(np.array([0, 4, 8], np.int64), "offsets")
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Add", ["idx", "offsets"], ["index_a"]),
        helper.make_node("Identity", ["offsets"], ["offsets_again"]),
        helper.make_node("Add", ["idx", "offsets_again"], ["index_b"]),
        helper.make_node("Mod", ["idx", "three"], ["index_c"]),
    ]
    inits = [offsets, numpy_helper.from_array(np.array(3, np.int64), "three")]
    outputs = [
        _lookup(nodes, inits, "a", "index_a", 4),
        _lookup(nodes, inits, "b", "index_b", 1),
        _lookup(nodes, inits, "c", "index_c", 4),
    ]
    if shared_gather:
        # A second group: e over index_c, beside c.
        outputs.append(_lookup(nodes, inits, "e", "index_c", 3))
        outputs.append(_lookup(nodes, inits, "d", "index_a", 2))
        nodes.append(helper.make_node("Identity", ["d.rows"], ["d_rows_out"]))
        outputs.append("d_rows_out")
    graph = helper.make_graph(
        nodes,
        "lookups",
        [
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["B", _FIELDS]),
            helper.make_tensor_value_info("bag", TensorProto.FLOAT, ["B", _GENRES]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "F", "D"]) for n in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(proto: onnx.ModelProto, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {
        "idx": rng.integers(0, 4, (5, _FIELDS)).astype(np.int64),
        "bag": rng.random((5, _GENRES)).astype(np.float32),
    }
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, feed)]


@pytest.mark.parametrize("shared_gather", [False, True])
def test_lookups_with_equal_inputs_become_one_and_compute_the_same(shared_gather: bool) -> None:
    proto = _graph(shared_gather=shared_gather)
    before = _run(proto)
    fused = onnx.ModelProto()
    fused.CopyFrom(proto)

    # a and b share their inputs by value; c reads another index (and with e forms a
    # second group); d's Gather has a second reader, so removing it would break that reader.
    assert fuse_field_lookups(fused) == (4 if shared_gather else 2)
    onnx.checker.check_model(fused, full_check=True)
    after = _run(fused)
    for want, have in zip(before, after, strict=True):
        np.testing.assert_array_equal(have, want)
    ops = [node.op_type for node in fused.graph.node]
    assert ops.count("Gather") == (3 if shared_gather else 2)
    assert ops.count("Split") == (2 if shared_gather else 1)
    # The second index computation and the old tables are gone.
    assert "index_b" not in {out for node in fused.graph.node for out in node.output}
    assert {"a.t", "b.t"}.isdisjoint(init.name for init in fused.graph.initializer)


def test_a_graph_without_a_group_is_left_alone() -> None:
    proto = _graph(shared_gather=False)
    # Only c and d-free lookups of distinct indices: drop b, and a stands alone.
    kept = [n for n in proto.graph.node if not n.output[0].startswith("b")]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    del proto.graph.output[1]
    original = proto.SerializeToString()
    assert fuse_field_lookups(proto) == 0
    assert proto.SerializeToString() == original


@pytest.fixture(scope="module")
def teacher_checkpoint(models_root: Path, bundle_dir: Path) -> Path:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    return models_root / ".work" / manifest["training"]["run_key"] / "teacher.pt"


def _rating(path: Path, fm: FeatureMap) -> np.ndarray:
    session = open_session(path, intra_op_threads=1, needs=RATING_OUTPUTS)
    batch = export.random_batch(fm, 256, rng=np.random.default_rng(3))
    feed = export.ort_feed(batch)
    return run_rating(session, feed, inputs=graph_inputs(session, needs=RATING_OUTPUTS))


def test_teacher_graphs_use_the_attention_op_and_fused_lookups(
    teacher_checkpoint: Path, tmp_path: Path
) -> None:
    stored = checkpoint.read_checkpoint(teacher_checkpoint)["config"]["feature_map"]
    fm = FeatureMap.from_json(stored)
    model = checkpoint.load_model(teacher_checkpoint, fm=fm)
    layers = [m for m in model.modules() if isinstance(m, InteractingLayer)]
    fused_pair = export.export_onnx(model, fm, tmp_path / "fused.onnx", metadata={})
    for layer in layers:
        layer.fused_export = False
    traced_pair = export.export_onnx(model, fm, tmp_path / "traced.onnx", metadata={})

    fused_proto, traced_proto = onnx.load(str(fused_pair)), onnx.load(str(traced_pair))
    attention = [n for n in fused_proto.graph.node if n.op_type == "Attention"]
    # Every layer is exported as Attention nodes (the towers' layers run on both sides).
    assert len(attention) >= len(layers) > 0
    assert export.graph_opset(fused_pair) == export.ATTENTION_OPSET
    assert not any(n.op_type == "Attention" for n in traced_proto.graph.node)
    assert export.graph_opset(traced_pair) == export.OPSET
    export.check_parity(model, fused_pair, fm)

    plain, lookups = tmp_path / "plain.rating.onnx", tmp_path / "fused.rating.onnx"
    export.export_rating_graph(traced_pair, plain, fm, fuse_lookups=False)
    export.export_rating_graph(fused_pair, lookups, fm)
    assert len(onnx.load(str(lookups)).graph.node) < len(onnx.load(str(plain)).graph.node)
    np.testing.assert_allclose(_rating(lookups, fm), _rating(plain, fm), atol=1e-5)
