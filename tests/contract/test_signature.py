"""One policy for ONNX signatures, on pure name/type maps and on real onnxruntime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from contract.errors import BundleError, ModelLoadError
from contract.session import graph_inputs, open_session, run_session
from contract.signature import INPUT_NAMES, INPUT_TYPES, OPTIONAL_INPUTS, check_signature

OUT = ["rating", "score"]


def test_all_inputs_or_a_subset_with_user_and_item() -> None:
    assert check_signature(dict(INPUT_TYPES), OUT, file="m") == INPUT_NAMES
    reversed_inputs = dict(reversed(list(INPUT_TYPES.items())))
    assert check_signature(reversed_inputs, OUT, file="m") == INPUT_NAMES  # contract order
    subset = {k: INPUT_TYPES[k] for k in ("item", "user", "item_genres")}
    assert check_signature(subset, OUT, file="m") == ("user", "item", "item_genres")
    assert OPTIONAL_INPUTS == ("user_feats", "item_feats", "item_genres")
    assert check_signature(dict(INPUT_TYPES), [*OUT, "repr"], file="m") == INPUT_NAMES


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({"user": "tensor(int64)"}, OUT, "needs at least user and item"),
        ({"item": "tensor(int64)"}, OUT, "needs at least user and item"),
        ({**INPUT_TYPES, "user": "tensor(int32)"}, OUT, "contract allows only"),
        ({**INPUT_TYPES, "item_genres": "tensor(double)"}, OUT, "contract allows only"),
        ({**INPUT_TYPES, "extra": "tensor(int64)"}, OUT, "contract allows only"),
        (dict(INPUT_TYPES), ["rating"], r"lacks outputs \['score'\]"),
    ],
)
def test_signatures_breaking_the_contract_are_refused(
    inputs: dict[str, str], outputs: list[str], message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        check_signature(inputs, outputs, file="m.onnx")
    assert issubclass(ModelLoadError, BundleError) and issubclass(BundleError, ValueError)


def _identity_model(path: Path, inputs: list[str]) -> Path:
    """rating = float(user), score = float(item): a graph that reads only `inputs`."""
    elem = {"item_genres": TensorProto.FLOAT}
    value_infos = [
        helper.make_tensor_value_info(n, elem.get(n, TensorProto.INT64), ["B"]) for n in inputs
    ]
    nodes = [
        helper.make_node("Cast", ["user"], ["rating"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["item"], ["score"], to=TensorProto.FLOAT),
    ]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B"]) for o in OUT]
    graph = helper.make_graph(nodes, "g", value_infos, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_session_reading_fewer_inputs_is_fed_only_those(tmp_path: Path) -> None:
    session = open_session(_identity_model(tmp_path / "m.onnx", ["user", "item"]))
    assert graph_inputs(session) == ("user", "item")
    arrays = {
        "user": np.array([2, 9]),
        "item": np.array([4, 1]),
        "user_feats": np.zeros((2, 1), np.int64),
        "item_feats": np.zeros((2, 1), np.int64),
        "item_genres": np.zeros((2, 1), np.float32),
    }
    rating, score = run_session(session, arrays)
    np.testing.assert_array_equal(rating, [2, 9])  # unclipped: clipping is the caller's
    np.testing.assert_array_equal(score, [4, 1])


def test_open_session_refuses_broken_files(tmp_path: Path) -> None:
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"cannot load g\.onnx"):
        open_session(garbage)
    only_user = tmp_path / "u.onnx"
    graph = helper.make_graph(
        [helper.make_node("Cast", ["user"], [o], to=TensorProto.FLOAT) for o in OUT],
        "g",
        [helper.make_tensor_value_info("user", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B"]) for o in OUT],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(only_user))
    with pytest.raises(ModelLoadError, match=r"u\.onnx has inputs .* needs at least user and item"):
        open_session(only_user)
