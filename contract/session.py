"""ONNX Runtime sessions as both sides open them: options, providers, signature check, feeding."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.errors import ModelLoadError
from contract.signature import OUTPUT_NAMES, RATING_OUTPUTS, check_signature

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# onnxruntime's own warnings (unused initialisers, node placement) go to stderr, not to
# logging; errors only. Provider fallbacks are reported by the callers through logging.
_ORT_LOG_ERRORS = 3


def choose_providers(requested: Sequence[str]) -> list[str]:
    """Keep the requested providers onnxruntime offers, in order; CPU always closes the list."""
    available = set(ort.get_available_providers())
    chosen = [name for name in requested if name in available]
    skipped = [name for name in requested if name not in available]
    if skipped:
        logger.info("onnxruntime providers not available, skipped", extra={"skipped": skipped})
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def session_options(*, intra_op_threads: int = 0, inter_op_threads: int = 0) -> ort.SessionOptions:
    """Full graph optimisation; thread counts of 0 leave onnxruntime's defaults."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _ORT_LOG_ERRORS
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads > 0:
        options.inter_op_num_threads = inter_op_threads
    return options


def graph_inputs(
    session: ort.InferenceSession,
    *,
    file: str = "model",
    needs: Sequence[str] = OUTPUT_NAMES,
) -> tuple[str, ...]:
    """The contract inputs this session's graph takes; raises ModelLoadError on a bad signature
    (`needs`: the outputs it must have, `RATING_OUTPUTS` for a rating graph)."""
    inputs = {node.name: node.type for node in session.get_inputs()}
    outputs = [node.name for node in session.get_outputs()]
    return check_signature(inputs, outputs, file=file, needs=needs)


def open_session(
    path: Path,
    *,
    providers: Sequence[str] = (CPU,),
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    needs: Sequence[str] = OUTPUT_NAMES,
) -> ort.InferenceSession:
    """An InferenceSession on `path` whose signature passed the contract (with `needs` as its
    outputs: the pair graph's by default, `RATING_OUTPUTS` for a rating graph).

    Raises ModelLoadError when onnxruntime cannot load the file or the signature is wrong.
    """
    path = Path(path)
    options = session_options(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelLoadError(f"cannot load {path.name}: {exc}") from exc
    graph_inputs(session, file=path.name, needs=needs)
    return session


def run_session(
    session: ort.InferenceSession,
    arrays: Mapping[str, np.ndarray],
    *,
    inputs: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(rating, score) of one batch, feeding only the inputs the graph takes.

    `arrays` holds every contract input; `inputs` are the graph's (from `graph_inputs`),
    looked up here when not given.
    """
    names = graph_inputs(session) if inputs is None else inputs
    rating, score = session.run(list(OUTPUT_NAMES), {name: arrays[name] for name in names})
    return np.asarray(rating), np.asarray(score)


def run_rating(
    session: ort.InferenceSession, arrays: Mapping[str, np.ndarray], *, inputs: Sequence[str]
) -> np.ndarray:
    """The `rating` output alone of one batch (a pair graph or a rating graph), feeding only
    the graph's `inputs` (from `graph_inputs`)."""
    (rating,) = session.run(list(RATING_OUTPUTS), {name: arrays[name] for name in inputs})
    return np.asarray(rating)
