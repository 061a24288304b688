"""Horizontal fusion of field lookups in an exported rating graph.

Every `FieldEmbedding` (training/models/layers.py) of a pair exports as the same four
nodes: `Concat(Gather(table, index), Unsqueeze(MatMul(genre_bag, genre_matrix)))`, and the
teacher's three components hold five such embeddings over the same index and genre bag
(two embeddings each for xDeepFM and AutoInt, MF's biases). On the k rows of a /recommend
each node's dispatch costs more than its arithmetic, so the lookups of a group that
shares its inputs are rewritten as one: the tables and genre matrices concatenated along
their columns, one lookup of the four nodes, and a `Split` back into the original
outputs. Nothing else in the graph changes; `export_rating_graph` checks the result
against the pair graph it was cut from.

onnxruntime's optimiser does not fuse these (it merges only equal nodes), and
onnxscript's rewriter has no rule for it, hence this pass. The members' index
computations are separate nodes of equal value in the export, so members are matched by
value numbering (equal ops on equal inputs) rather than by tensor name.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class _Lookup:
    """One `FieldEmbedding` in the graph: its four nodes and its two parameter matrices."""

    concat: onnx.NodeProto
    gather: onnx.NodeProto
    unsqueeze: onnx.NodeProto
    matmul: onnx.NodeProto
    table: np.ndarray  # [rows, d]
    genre: np.ndarray  # [genres, d]


def fuse_field_lookups(proto: onnx.ModelProto) -> int:
    """Rewrites every group of at least two lookups with equal inputs as one; returns how
    many lookups were fused. `proto` is changed in place."""
    graph = proto.graph
    numbers = _value_numbers(graph)
    groups: dict[Hashable, list[_Lookup]] = defaultdict(list)
    for lookup in _lookups(graph):
        key = (
            numbers[lookup.gather.input[1]],
            numbers[lookup.matmul.input[0]],
            numbers[lookup.unsqueeze.input[1]],
            lookup.table.shape[0],
            lookup.genre.shape[0],
            lookup.table.dtype.str,
        )
        groups[key].append(lookup)
    plans = [
        _plan(members, prefix=f"fused_lookup_{index}")
        for index, members in enumerate(g for g in groups.values() if len(g) > 1)
    ]
    if not plans:
        return 0
    # One rebuild for every group: the node list is copied when it is rewritten, so the
    # lookups found above only name nodes of the graph as it was before any rewrite.
    removed = {id(n) for plan in plans for n in plan.removed}
    before = {id(plan.anchor): plan.nodes for plan in plans}
    nodes = []
    for node in graph.node:
        nodes += before.get(id(node), [])
        if id(node) not in removed:
            nodes.append(node)
    for plan in plans:
        graph.initializer.extend(plan.initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_dead(graph)
    return sum(plan.lookups for plan in plans)


def _value_numbers(graph: onnx.GraphProto) -> dict[str, Hashable]:
    """A key per tensor, equal for tensors that equal ops compute from equal inputs."""
    numbers: dict[str, Hashable] = {vi.name: ("input", vi.name) for vi in graph.input}
    for init in graph.initializer:
        numbers[init.name] = _tensor_key(init)
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            # The exporter shares equal constants through Identity nodes.
            numbers[node.output[0]] = numbers.get(node.input[0], ("missing", node.input[0]))
            continue
        attributes = tuple(sorted((a.name, _attribute_key(a)) for a in node.attribute))
        inputs = tuple(numbers.get(name, ("missing", name)) for name in node.input)
        for position, output in enumerate(node.output):
            numbers[output] = (node.domain, node.op_type, attributes, inputs, position)
    return numbers


def _tensor_key(tensor: onnx.TensorProto) -> Hashable:
    # By value: the exporter names every constant, so equal constants differ by name.
    data = numpy_helper.to_array(tensor)
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    return ("const", data.dtype.str, data.shape, digest)


def _attribute_key(attribute: onnx.AttributeProto) -> Hashable:
    if attribute.type == onnx.AttributeProto.TENSOR:
        return _tensor_key(attribute.t)
    return attribute.SerializeToString()


def _lookups(graph: onnx.GraphProto) -> list[_Lookup]:
    producer = {out: node for node in graph.node for out in node.output}
    uses: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
    for output in graph.output:
        uses[output.name] += 1
    initializers = {init.name: init for init in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "Concat" or len(node.input) != 2 or _int_attribute(node, "axis") != 1:
            continue
        gather, unsqueeze = (producer.get(name) for name in node.input)
        if gather is None or unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
            continue
        matmul = producer.get(unsqueeze.input[0])
        if (
            gather.op_type != "Gather"
            or _int_attribute(gather, "axis") != 0
            or matmul is None
            or matmul.op_type != "MatMul"
            or len(unsqueeze.input) != 2
            or gather.input[0] not in initializers
            or matmul.input[1] not in initializers
            # The intermediate tensors must feed this Concat alone, or removing them breaks
            # another consumer.
            or any(uses[n.output[0]] != 1 for n in (gather, unsqueeze, matmul))
        ):
            continue
        table = numpy_helper.to_array(initializers[gather.input[0]])
        genre = numpy_helper.to_array(initializers[matmul.input[1]])
        if table.ndim == 2 and genre.ndim == 2 and table.shape[1] == genre.shape[1]:
            found.append(_Lookup(node, gather, unsqueeze, matmul, table, genre))
    return found


def _int_attribute(node: onnx.NodeProto, name: str) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return 0  # both Concat's and Gather's axis default to 0 where the schema has a default


@dataclass(frozen=True)
class _Plan:
    """One group's rewrite: new nodes go before `anchor` (its first Concat in graph
    order, whose inputs all exist there), the members' four nodes each go."""

    anchor: onnx.NodeProto
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    removed: list[onnx.NodeProto]
    lookups: int


def _plan(members: Sequence[_Lookup], *, prefix: str) -> _Plan:
    first = members[0]  # `_lookups` lists them in graph order
    names = {part: f"{prefix}.{part}" for part in ("table", "genre", "sizes", "rows", "bag")}
    sizes = np.array([m.table.shape[1] for m in members], np.int64)
    initializers = [
        numpy_helper.from_array(np.concatenate([m.table for m in members], axis=1), names["table"]),
        numpy_helper.from_array(np.concatenate([m.genre for m in members], axis=1), names["genre"]),
        numpy_helper.from_array(sizes, names["sizes"]),
    ]  # fmt: skip
    bag3, fields = f"{prefix}.bag3", f"{prefix}.fields"
    nodes = [
        helper.make_node("Gather", [names["table"], first.gather.input[1]], [names["rows"]]),
        helper.make_node("MatMul", [first.matmul.input[0], names["genre"]], [names["bag"]]),
        helper.make_node("Unsqueeze", [names["bag"], first.unsqueeze.input[1]], [bag3]),
        helper.make_node("Concat", [names["rows"], bag3], [fields], axis=1),
        helper.make_node(
            "Split", [fields, names["sizes"]], [m.concat.output[0] for m in members], axis=-1
        ),
    ]
    for node in nodes:
        node.name = f"{prefix}/{node.op_type}"
    removed = [n for m in members for n in (m.concat, m.gather, m.unsqueeze, m.matmul)]
    return _Plan(first.concat, nodes, initializers, removed, len(members))


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Removes nodes whose outputs nothing reads, then initialisers nothing reads."""
    needed = {output.name for output in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {name for node in graph.node for name in node.output}
    value_info = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
