"""ONNX export of any TwoHeadModel, parity against PyTorch, the INT8 variant and latency.

The graph signature is the contract's (`contract.signature`, docs/contracts.md section 1):
inputs `INPUT_NAMES` with a dynamic batch axis, outputs `OUTPUT_NAMES`. Every export is
checked with `onnx.checker` and against PyTorch on fresh random valid inputs before use.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.utils import Extractor
from onnxruntime.quantization import QuantType, quantize_dynamic

from contract.features import FEATURE_SCHEMA_VERSION, FeatureMap
from contract.session import graph_inputs, open_session, run_rating, run_session
from contract.signature import INPUT_DTYPES, INPUT_NAMES, OUTPUT_NAMES, RATING_OUTPUTS
from contract.tables import FeatureTables
from training.features import Batch, make_batch
from training.graph_fusion import fuse_field_lookups
from training.models.base import TwoHeadModel, to_inputs

log = logging.getLogger(__name__)

OPSET = 18
# ONNX's Attention op (training/models/layers.py, FieldAttention) exists from opset 23 on;
# the TorchScript exporter writes at most opset 20. Every other op these graphs use is the
# same in opsets 18 to 23 (later opsets only add element types), so a graph holding an
# Attention node is exported at OPSET and its default-domain import raised to this; the
# checker and the parity check against PyTorch then run on the raised graph.
ATTENTION_OPSET = 23
PARITY_ATOL = 1e-4
PARITY_BATCH_SIZES = (1, 7, 64, 513)
# The INT8 student may lose against the fp32 student at most what the student targets let
# the student lose against the teacher: RMSE within +1 %, NDCG@10 within -3 %. Measured
# against the fp32 student so that the decision isolates the cost of quantisation.
INT8_MAX_RMSE_RATIO = 1.01
INT8_MIN_NDCG_RATIO = 0.97

_BATCH_DIM = "batch"


class ExportError(RuntimeError):
    """An exported graph is invalid or disagrees with the PyTorch model."""


# ---------------------------------------------------------------- inputs


def random_batch(feature_map: FeatureMap, size: int, *, rng: np.random.Generator) -> Batch:
    """Random but valid inputs: every index inside its vocabulary, unknown (0) included."""
    user_feats = np.stack(
        [rng.integers(0, v, size) for v in feature_map.user_field_vocabs], axis=1
    ).astype(np.int64)
    item_feats = np.stack(
        [rng.integers(0, v, size) for v in feature_map.item_field_vocabs], axis=1
    ).astype(np.int64)
    return Batch(
        user=rng.integers(0, feature_map.user_vocab, size).astype(np.int64),
        item=rng.integers(0, feature_map.item_vocab, size).astype(np.int64),
        user_feats=user_feats,
        item_feats=item_feats,
        item_genres=(rng.random((size, feature_map.n_genres)) < 0.3).astype(np.float32),
    )


def ort_feed(batch: Batch) -> dict[str, np.ndarray]:
    arrays = (batch.user, batch.item, batch.user_feats, batch.item_feats, batch.item_genres)
    return dict(zip(INPUT_NAMES, arrays, strict=True))


# ---------------------------------------------------------------- export


def export_onnx(
    model: TwoHeadModel,
    feature_map: FeatureMap,
    path: Path,
    *,
    metadata: Mapping[str, str],
    opset: int = OPSET,
) -> Path:
    """Writes `model` as a single-file ONNX graph and checks it with onnx.checker.

    `metadata` lands in the model's metadata_props next to the feature schema version;
    the bundle passes its version here so a stray file can be traced to its bundle.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = to_inputs(random_batch(feature_map, 4, rng=np.random.default_rng(0)))
    dynamic_axes = {name: {0: _BATCH_DIM} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated; it is the one that
            # exports embedding models in seconds without extra dependencies.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    _complete_inputs(proto, feature_map)
    finish_graph(proto, path, metadata=metadata)
    log.info("exported %s (%d bytes, opset %d)", path, path.stat().st_size, opset)
    return path


def finish_graph(proto: onnx.ModelProto, path: Path, *, metadata: Mapping[str, str]) -> None:
    """Stamps the metadata (with the feature schema version), saves and checks the graph.

    The bundle passes its version in `metadata`, so a stray file can be traced to its bundle.
    """
    _raise_opset_for_attention(proto)
    props = {"feature_schema_version": str(FEATURE_SCHEMA_VERSION), **dict(metadata)}
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    proto.producer_name = "recsys-distill"
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path}: onnx.checker rejected the graph: {err}") from None


def _raise_opset_for_attention(proto: onnx.ModelProto) -> None:
    if not any(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        return
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, ATTENTION_OPSET)
    # ONNX IR version 10 is the first that opset 23 may be used with.
    proto.ir_version = max(proto.ir_version, 10)


def _complete_inputs(proto: onnx.ModelProto, feature_map: FeatureMap) -> None:
    """Restores inputs the tracer dropped because the model ignores them, in contract order.

    The contract lets a graph drop the side-feature inputs, but a graph that takes all five
    can be fed the same way by every tool, so training always writes all five.
    """
    widths = {
        "user_feats": len(feature_map.user_fields),
        "item_feats": len(feature_map.item_fields),
        "item_genres": feature_map.n_genres,
    }
    present = {vi.name: vi for vi in proto.graph.input}
    ordered = []
    for name in INPUT_NAMES:
        if name in present:
            ordered.append(present[name])
            continue
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(INPUT_DTYPES[name]))
        shape: list[str | int] = [_BATCH_DIM] if name not in widths else [_BATCH_DIM, widths[name]]
        ordered.append(onnx.helper.make_tensor_value_info(name, elem, shape))
    extra = [name for name in present if name not in INPUT_NAMES]
    if extra:
        raise ExportError(f"exported graph has unexpected inputs {extra}")
    del proto.graph.input[:]
    proto.graph.input.extend(ordered)


def read_metadata(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def graph_opset(path: Path) -> int:
    proto = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------- running


def ort_session(path: Path, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session as the contract opens one (signature checked), with `threads` threads."""
    return open_session(path, intra_op_threads=threads, inter_op_threads=1)


def ort_predict(session: ort.InferenceSession, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    return run_session(session, ort_feed(batch))


def ort_pair_predict(
    session: ort.InferenceSession,
    tables: FeatureTables,
    users: np.ndarray,
    items: np.ndarray,
    *,
    batch_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """(rating, score) of (user, item) index pairs, in chunks."""
    ratings = np.empty(len(users), np.float32)
    scores = np.empty(len(users), np.float32)
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        ratings[sl], scores[sl] = ort_predict(session, make_batch(tables, users[sl], items[sl]))
    return ratings, scores


# ---------------------------------------------------------------- parity


def _max_abs_diff(have: np.ndarray, want: np.ndarray) -> float:
    """Largest |have - want| in float64; 0 for an empty batch."""
    return float(np.max(np.abs(have.astype(np.float64) - want))) if have.size else 0.0


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float  # over both outputs and every batch size
    batch_sizes: tuple[int, ...]


@torch.no_grad()
def check_parity(
    model: TwoHeadModel,
    path: Path,
    feature_map: FeatureMap,
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    atol: float = PARITY_ATOL,
    seed: int | None = None,
) -> Parity:
    """ONNX Runtime vs PyTorch on fresh random valid inputs; raises ExportError past `atol`.

    `seed=None` draws fresh inputs on every call so repeated exports test new points.
    """
    rng = np.random.default_rng(seed)
    session = ort_session(path)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for size in batch_sizes:
            batch = random_batch(feature_map, size, rng=rng)
            expected = [t.numpy() for t in model(*to_inputs(batch))]
            got = ort_predict(session, batch)
            for name, want, have in zip(OUTPUT_NAMES, expected, got, strict=True):
                if have.shape != want.shape:
                    raise ExportError(
                        f"{path}: output {name} has shape {have.shape}, PyTorch {want.shape}"
                    )
                diff = _max_abs_diff(have, want)
                worst = max(worst, diff)
                if not diff <= atol:
                    raise ExportError(
                        f"{path}: output {name} differs from PyTorch by {diff:.3g} "
                        f"(> {atol:g}) at batch size {size}"
                    )
    finally:
        model.train(was_training)
    log.info("parity %s: max |onnx - torch| = %.3g", path.name, worst)
    return Parity(max_abs_diff=worst, batch_sizes=tuple(batch_sizes))


def compare_onnx(
    reference: Path, candidate: Path, feature_map: FeatureMap, *, size: int = 512, seed: int = 0
) -> float:
    """Max |candidate - reference| of the rating output on random inputs (INT8 drift)."""
    batch = random_batch(feature_map, size, rng=np.random.default_rng(seed))
    ref, _ = ort_predict(ort_session(reference), batch)
    got, _ = ort_predict(ort_session(candidate), batch)
    return _max_abs_diff(got, ref)


# ---------------------------------------------------------------- rating graph


def export_rating_graph(
    source: Path,
    target: Path,
    feature_map: FeatureMap,
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    atol: float = PARITY_ATOL,
    seed: int = 0,
    fuse_lookups: bool = True,
) -> float:
    """Writes `source`'s pair graph cut to its `rating` output and returns its largest rating
    difference from the pair graph's on random valid inputs (ExportError past `atol`).

    What the service runs for ratings: /recommend takes its scores from the retrieval and
    /predict_rating shows none, so the score towers' nodes would be run for nothing (the
    log says how many are cut), and, with `fuse_lookups`, field lookups with equal inputs
    are fused (training/graph_fusion.py). Same inputs; the model name in the metadata gets
    the suffix `.rating`.
    """
    proto = onnx.load(str(source))
    inputs = [node.name for node in proto.graph.input]
    cut = Extractor(proto).extract_model(inputs, list(RATING_OUTPUTS))
    fused = fuse_field_lookups(cut) if fuse_lookups else 0
    metadata = {p.key: p.value for p in proto.metadata_props}
    metadata["model"] = metadata.get("model", source.stem) + ".rating"
    finish_graph(cut, target, metadata=metadata)
    pair = ort_session(source)
    rating = open_session(target, intra_op_threads=1, inter_op_threads=1, needs=RATING_OUTPUTS)
    names = graph_inputs(rating, file=target.name, needs=RATING_OUTPUTS)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for size in batch_sizes:
        feed = ort_feed(random_batch(feature_map, size, rng=rng))
        want, _ = run_session(pair, feed)
        have = run_rating(rating, feed, inputs=names)
        diff = _max_abs_diff(have, want)
        worst = max(worst, diff)
        if not diff <= atol:
            raise ExportError(f"{target}: rating differs from {source.name} by {diff:.3g}")
    log.info(
        "rating graph %s: %d of %d nodes (%d field lookups fused), "
        "max |rating - pair graph| = %.3g",
        target.name,
        len(cut.graph.node),
        len(proto.graph.node),
        fused,
        worst,
    )
    return worst


# ---------------------------------------------------------------- INT8


# What INT8 quantisation covers: the embedding tables (Gather), 93% of the student's bytes
# in a `make run` bundle. Quantising its MatMul layers as well (onnxruntime's default set)
# makes the file 8% smaller but the graphs slower, their activations being quantised on
# every run, and the ratings further from fp32's: on the student of a `make run` bundle
# (7ca1252), the rating graph on 10 rows 39.9 against 34.4 us (fp32 30.6), the whole
# catalogue 0.644 against 0.533 ms, mean |rating - fp32's| 0.0167 against 0.0119
# (`python -m bench.int8`, bench/results/int8.md).
INT8_OPS: tuple[str, ...] = ("Gather",)


def quantize_int8(source: Path, target: Path, *, ops: Sequence[str] | None = INT8_OPS) -> Path:
    """Dynamic INT8 quantisation of the weights of the `ops` nodes (None: onnxruntime's
    default set, MatMul included), stored as int8."""
    target.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    # The quantiser logs per-tensor chatter on the root logger; keep the pipeline log legible.
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(source),
                str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(ops) if ops is not None else None,
            )
    finally:
        root.setLevel(level)
    proto = onnx.load(str(target))
    onnx.checker.check_model(proto)
    log.info(
        "quantised %s -> %s (%d -> %d bytes)",
        source.name,
        target.name,
        source.stat().st_size,
        target.stat().st_size,
    )
    return target


def int8_acceptable(int8: Mapping[str, float], reference: Mapping[str, float]) -> tuple[bool, str]:
    """Whether the INT8 model's quality stays within the student targets of `reference`.

    `reference` is the fp32 student under protocol P: quantisation may cost at most what
    distillation may cost (RMSE x1.01, NDCG@10 x0.97). A metric that could not be
    measured (NaN) rejects the INT8 model rather than accept it blindly.
    """
    rmse, ref_rmse = int8.get("rmse", float("nan")), reference.get("rmse", float("nan"))
    ndcg, ref_ndcg = int8.get("ndcg@10", float("nan")), reference.get("ndcg@10", float("nan"))
    if not all(np.isfinite(v) for v in (rmse, ref_rmse, ndcg, ref_ndcg)):
        return False, "INT8 quality could not be measured"
    if rmse > INT8_MAX_RMSE_RATIO * ref_rmse:
        return False, f"INT8 RMSE {rmse:.4f} > {INT8_MAX_RMSE_RATIO} x fp32 {ref_rmse:.4f}"
    if ndcg < INT8_MIN_NDCG_RATIO * ref_ndcg:
        return False, f"INT8 NDCG@10 {ndcg:.4f} < {INT8_MIN_NDCG_RATIO} x fp32 {ref_ndcg:.4f}"
    return True, "within targets"


# ---------------------------------------------------------------- latency


# Items per session run when timing a whole catalogue (memory, not speed, sets it).
LATENCY_CHUNK = 65_536


def ort_latency_ms(
    path: Path,
    feature_map: FeatureMap,
    tables: FeatureTables,
    *,
    threads: int = 1,
    runs: int = 30,
    user: int = 1,
) -> float:
    """Median wall time (ms) of scoring the whole catalogue for one user with ONNX Runtime.

    The inputs are built once: this measures the model, not the feature gathering. The
    catalogue goes through in runs of at most `LATENCY_CHUNK` items: in one run, a
    million-item catalogue made the teacher's CIN ask for a 10 GB buffer.
    """
    session = ort_session(path, threads=threads)
    n_items = feature_map.n_items
    user = min(max(user, 0), feature_map.n_users)
    names = graph_inputs(session, file=Path(path).name)
    feeds = []
    for start in range(1, n_items + 1, LATENCY_CHUNK):
        items = np.arange(start, min(start + LATENCY_CHUNK, n_items + 1), dtype=np.int64)
        arrays = ort_feed(make_batch(tables, np.full(len(items), user, np.int64), items))
        feeds.append({name: arrays[name] for name in names})

    def score_catalogue() -> None:
        for feed in feeds:
            session.run(list(OUTPUT_NAMES), feed)

    for _ in range(3):
        score_catalogue()
    times = []
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        score_catalogue()
        times.append((time.perf_counter() - started) * 1000.0)
    return float(statistics.median(times))
