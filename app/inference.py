"""ONNX Runtime sessions: provider choice, signature check, warm-up and batched scoring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

logger = logging.getLogger(__name__)

INPUTS = {
    "user": "tensor(int64)",
    "item": "tensor(int64)",
    "user_feats": "tensor(int64)",
    "item_feats": "tensor(int64)",
    "item_genres": "tensor(float)",
}
OUTPUTS = ("rating", "score")
CPU = "CPUExecutionProvider"


class ModelLoadError(Exception):
    """An ONNX file that cannot be served; the message says why."""


def choose_providers(requested: list[str]) -> list[str]:
    """Keep the requested providers onnxruntime offers, in order; CPU always closes the list."""
    available = set(ort.get_available_providers())
    chosen = [name for name in requested if name in available]
    skipped = [name for name in requested if name not in available]
    if skipped:
        logger.info("onnxruntime providers not available, skipped", extra={"skipped": skipped})
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


@dataclass(frozen=True)
class Prediction:
    rating: npt.NDArray[np.float32]  # [B], in [1, 5]
    score: npt.NDArray[np.float32]  # [B]


class ModelRunner:
    """One InferenceSession and what is known about it; `run` is thread-safe."""

    def __init__(
        self, path: Path, *, name: str, providers: list[str], intra_op_threads: int = 0
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"cannot load {path.name}: {exc}") from exc
        self.name = name
        self.file = path.name
        self.input_names: tuple[str, ...] = ()
        self._check_signature()
        # onnxruntime silently drops to CPU when CUDA libraries are missing, so report
        # what the session really uses rather than what was asked for.
        self.provider = self.session.get_providers()[0]
        if self.provider != providers[0]:
            logger.warning(
                "model runs on a fallback provider",
                extra={"model": name, "requested": providers[0], "actual": self.provider},
            )
        logger.info(
            "model session ready",
            extra={"model": name, "file": self.file, "provider": self.provider},
        )

    def _check_signature(self) -> None:
        inputs = {node.name: node.type for node in self.session.get_inputs()}
        unexpected = {name: kind for name, kind in inputs.items() if INPUTS.get(name) != kind}
        if unexpected or not {"user", "item"} <= inputs.keys():
            raise ModelLoadError(
                f"{self.file} has inputs {inputs}; the contract allows only {INPUTS} and "
                "needs at least user and item"
            )
        # An exporter drops inputs the graph never reads (a pruned student may ignore a
        # field); feed only what the graph takes instead of failing on a valid model.
        self.input_names = tuple(name for name in INPUTS if name in inputs)
        if len(self.input_names) < len(INPUTS):
            logger.info(
                "model reads a subset of the inputs",
                extra={"model": self.name, "inputs": list(self.input_names)},
            )
        outputs = [node.name for node in self.session.get_outputs()]
        missing = [name for name in OUTPUTS if name not in outputs]
        if missing:
            raise ModelLoadError(f"{self.file} lacks outputs {missing}")

    def run(
        self,
        *,
        user: npt.NDArray[np.int64],  # [B]
        item: npt.NDArray[np.int64],  # [B]
        user_feats: npt.NDArray[np.int64],  # [B, Fu]
        item_feats: npt.NDArray[np.int64],  # [B, Fi]
        item_genres: npt.NDArray[np.float32],  # [B, G]
    ) -> Prediction:
        feed = {
            "user": user,
            "item": item,
            "user_feats": user_feats,
            "item_feats": item_feats,
            "item_genres": item_genres,
        }
        rating, score = self.session.run(
            list(OUTPUTS), {name: feed[name] for name in self.input_names}
        )
        # The graph clips already; clipping again guards against a bundle that forgot to.
        return Prediction(
            rating=np.clip(np.asarray(rating, dtype=np.float32).reshape(-1), 1.0, 5.0),
            score=np.asarray(score, dtype=np.float32).reshape(-1),
        )


def top_k(
    score: npt.NDArray[np.float32], k: int, *, exclude: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.int64]:
    """Positions of the k best scores, best first; `exclude` are positions never returned.

    `score` is modified in place when `exclude` is given (callers pass a fresh model output).
    """
    if exclude is not None and exclude.size:
        score[exclude] = -np.inf
    k = min(k, score.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < score.shape[0]:
        candidates = np.argpartition(-score, k - 1)[:k]
    else:
        candidates = np.arange(score.shape[0])
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    return order[np.isfinite(score[order])].astype(np.int64)
