"""Serving the models: one runner per ONNX file (contract session set-up), and top-k selection."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.errors import ModelLoadError
from contract.ratings import DEFAULT_RATING_SCALE, RatingScale, clip_ratings
from contract.session import CPU, choose_providers, graph_inputs, open_session, run_session
from contract.signature import INPUT_NAMES
from contract.towers import TOWER_OUTPUT, open_tower_session

logger = logging.getLogger(__name__)

__all__ = ["CPU", "ModelLoadError", "ModelRunner", "Prediction", "TowerRunner", "choose_providers"]


@dataclass(frozen=True)
class Prediction:
    rating: npt.NDArray[np.float32]  # [B], within the bundle's rating scale
    score: npt.NDArray[np.float32]  # [B]


class ModelRunner:
    """One InferenceSession and what is known about it; `run` is thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        providers: list[str],
        intra_op_threads: int = 0,
        rating_scale: RatingScale = DEFAULT_RATING_SCALE,
    ) -> None:
        self.session = open_session(path, providers=providers, intra_op_threads=intra_op_threads)
        self.name = name
        self.file = path.name
        self.rating_scale = rating_scale
        # The contract lets a graph drop side-feature inputs it never reads (a pruned
        # student may ignore a field); feed only what the graph takes.
        self.input_names = graph_inputs(self.session, file=self.file)
        if len(self.input_names) < len(INPUT_NAMES):
            logger.info(
                "model reads a subset of the inputs",
                extra={"model": name, "inputs": list(self.input_names)},
            )
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

    def run(
        self,
        *,
        user: npt.NDArray[np.int64],  # [B]
        item: npt.NDArray[np.int64],  # [B]
        user_feats: npt.NDArray[np.int64],  # [B, Fu]
        item_feats: npt.NDArray[np.int64],  # [B, Fi]
        item_genres: npt.NDArray[np.float32],  # [B, G]
    ) -> Prediction:
        feed: dict[str, npt.NDArray[Any]] = {
            "user": user,
            "item": item,
            "user_feats": user_feats,
            "item_feats": item_feats,
            "item_genres": item_genres,
        }
        rating, score = run_session(self.session, feed, inputs=self.input_names)
        # The graph clips already; clipping again guards against a bundle that forgot to.
        return Prediction(
            rating=clip_ratings(rating, self.rating_scale),
            score=np.asarray(score, dtype=np.float32).reshape(-1),
        )


class TowerRunner:
    """A variant's user-tower graph: user index and feature row in, retrieval vector out."""

    def __init__(
        self, path: Path, *, name: str, providers: list[str], intra_op_threads: int = 0
    ) -> None:
        self.session = open_tower_session(
            path, providers=providers, intra_op_threads=intra_op_threads
        )
        self.name = name
        self.provider = self.session.get_providers()[0]

    def vectors(
        self,
        user: npt.NDArray[np.int64],  # [B]
        user_feats: npt.NDArray[np.int64],  # [B, Fu]
    ) -> npt.NDArray[np.float32]:
        (vectors,) = self.session.run([TOWER_OUTPUT], {"user": user, "user_feats": user_feats})
        return np.asarray(vectors, dtype=np.float32)  # [B, D]
