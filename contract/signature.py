"""The ONNX graph signature every model has, and which inputs a graph may drop.

Inputs in this order, each with a dynamic batch axis; outputs `rating` (clipped inside the
graph to the rating scale) and `score` (ranking score, higher is better). A model's rating
graph (the pair graph cut to its `rating` output, what the service runs) has the same
inputs and `RATING_OUTPUTS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contract.errors import ModelLoadError

INPUT_NAMES = ("user", "item", "user_feats", "item_feats", "item_genres")
OUTPUT_NAMES = ("rating", "score")
RATING_OUTPUTS = ("rating",)
INPUT_DTYPES: Mapping[str, type[np.generic]] = {
    "user": np.int64,
    "item": np.int64,
    "user_feats": np.int64,
    "item_feats": np.int64,
    "item_genres": np.float32,
}
# The same dtypes as onnxruntime names them in NodeArg.type.
INPUT_TYPES: Mapping[str, str] = {
    "user": "tensor(int64)",
    "item": "tensor(int64)",
    "user_feats": "tensor(int64)",
    "item_feats": "tensor(int64)",
    "item_genres": "tensor(float)",
}
# Every model reads who and what. The side-feature inputs are optional: an exporter drops
# inputs a (pruned) graph never reads, and such a graph is still a valid model.
REQUIRED_INPUTS = ("user", "item")
OPTIONAL_INPUTS = tuple(name for name in INPUT_NAMES if name not in REQUIRED_INPUTS)


def check_signature(
    inputs: Mapping[str, str],
    outputs: Sequence[str],
    *,
    file: str,
    needs: Sequence[str] = OUTPUT_NAMES,
) -> tuple[str, ...]:
    """The inputs to feed a graph, in contract order; ModelLoadError if it breaks the contract.

    `inputs` maps the graph's input names to their onnxruntime types; `outputs` are its
    output names, which must include `needs` (a pair graph's `OUTPUT_NAMES`, a rating
    graph's `RATING_OUTPUTS`). Unknown inputs, wrong dtypes, a missing required input or a
    missing output are refused; extra outputs are harmless (only `needs` are fetched).
    """
    unexpected = {name: kind for name, kind in inputs.items() if INPUT_TYPES.get(name) != kind}
    missing = [name for name in REQUIRED_INPUTS if name not in inputs]
    if unexpected or missing:
        raise ModelLoadError(
            f"{file} has inputs {dict(inputs)}; the contract allows only {dict(INPUT_TYPES)} "
            f"and needs at least {' and '.join(REQUIRED_INPUTS)}"
        )
    lacking = [name for name in needs if name not in outputs]
    if lacking:
        raise ModelLoadError(f"{file} lacks outputs {lacking}")
    return tuple(name for name in INPUT_NAMES if name in inputs)
