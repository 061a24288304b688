"""Serving the models: one runner per ONNX file (contract session set-up), and top-k selection."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.errors import ModelLoadError
from contract.rating_factors import RatingFactors
from contract.ratings import DEFAULT_RATING_SCALE, RatingScale, clip_ratings
from contract.session import CPU, choose_providers, graph_inputs, open_session, run_rating
from contract.signature import INPUT_NAMES, OUTPUT_NAMES, RATING_OUTPUTS
from contract.towers import TOWER_OUTPUT, open_tower_session

logger = logging.getLogger(__name__)
# Users per tower run when precomputing the known users' vectors.
_PRECOMPUTE_BATCH = 4096

__all__ = ["CPU", "ModelLoadError", "ModelRunner", "TowerRunner", "choose_providers"]


class ModelRunner:
    """The session that rates pairs for one model; `run` is thread-safe.

    It opens the model's `rating_graph` when the bundle has one (the pair graph at `path` cut
    to its `rating` output, contract.layout.RATING_GRAPH_FILES), else the pair graph itself
    (a bundle from before rating graphs); either way only `rating` is fetched, since
    /recommend takes its scores from the retrieval and /predict_rating shows none. `file`
    names the model (its pair graph), `graph_file` what runs. With `factors` (a separable
    rating head's factored form, contract/rating_factors.py), `rate_known` rates pairs of
    known users without a session run.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        providers: list[str],
        intra_op_threads: int = 0,
        rating_scale: RatingScale = DEFAULT_RATING_SCALE,
        rating_graph: Path | None = None,
        factors: RatingFactors | None = None,
    ) -> None:
        graph = rating_graph or path
        needs = OUTPUT_NAMES if rating_graph is None else RATING_OUTPUTS
        self.session = open_session(
            graph, providers=providers, intra_op_threads=intra_op_threads, needs=needs
        )
        self.name = name
        self.file = path.name
        self.graph_file = graph.name
        self.rating_scale = rating_scale
        self.factors = factors
        # The contract lets a graph drop side-feature inputs it never reads (a pruned
        # student may ignore a field); feed only what the graph takes.
        self.input_names = graph_inputs(self.session, file=self.graph_file, needs=needs)
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
            extra={
                "model": name,
                "file": self.graph_file,
                "provider": self.provider,
                "known_users_rated_by": "rating factors" if factors is not None else "graph",
            },
        )

    def rate_known(
        self,
        user: npt.NDArray[np.int64],  # [B]
        item: npt.NDArray[np.int64],  # [B]
    ) -> npt.NDArray[np.float32] | None:
        """Ratings [B] from the rating factors when the model has them and every user is a
        known one (index > 0: its factors were computed from its own feature row); None
        otherwise, and the caller runs the graph."""
        if self.factors is None or not user.size or int(user.min()) <= 0:
            return None
        return clip_ratings(self.factors.rate(user, item), self.rating_scale)

    def run(
        self,
        *,
        user: npt.NDArray[np.int64],  # [B]
        item: npt.NDArray[np.int64],  # [B]
        user_feats: npt.NDArray[np.int64],  # [B, Fu]
        item_feats: npt.NDArray[np.int64],  # [B, Fi]
        item_genres: npt.NDArray[np.float32],  # [B, G]
    ) -> npt.NDArray[np.float32]:
        """Ratings [B], within the bundle's rating scale."""
        feed: dict[str, npt.NDArray[Any]] = {
            "user": user,
            "item": item,
            "user_feats": user_feats,
            "item_feats": item_feats,
            "item_genres": item_genres,
        }
        rating = run_rating(self.session, feed, inputs=self.input_names)
        # The graph clips already; clipping again guards against a bundle that forgot to.
        return clip_ratings(rating, self.rating_scale)


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
        # Known users' vectors, rows 0..n_users, filled once by `precompute` before serving.
        self.table: npt.NDArray[np.float32] | None = None

    def vectors(
        self,
        user: npt.NDArray[np.int64],  # [B]
        user_feats: npt.NDArray[np.int64],  # [B, Fu]
    ) -> npt.NDArray[np.float32]:
        (vectors,) = self.session.run([TOWER_OUTPUT], {"user": user, "user_feats": user_feats})
        return np.asarray(vectors, dtype=np.float32)  # [B, D]

    def vector(self, user: int, user_row: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """One user's query vector [D]: a known user's precomputed row, else a tower run
        (user 0, the cold-start user, takes whatever feature row the request gave)."""
        table = self.table
        if table is not None and user > 0:
            return table[user]
        return self.vectors(np.array([user], dtype=np.int64), user_row[None, :])[0]

    def precompute(self, user_feats: npt.NDArray[np.int64], *, dim: int, max_bytes: int) -> bool:
        """Runs the tower once over every known user (`user_feats` [n_users + 1, Fu]) and
        keeps the vectors, when they fit in `max_bytes`; returns whether it did.

        A known user's tower input (index and the bundle's feature row) never changes while
        a bundle serves, so its vector is a constant: the table turns a session run per
        uncached /recommend (a tenth to a fifth of it, docs/BENCHMARKS.md) into a row read.
        """
        rows = user_feats.shape[0]
        if rows * dim * 4 > max_bytes:
            return False
        table = np.empty((rows, dim), dtype=np.float32)
        for start in range(0, rows, _PRECOMPUTE_BATCH):
            stop = min(start + _PRECOMPUTE_BATCH, rows)
            table[start:stop] = self.vectors(
                np.arange(start, stop, dtype=np.int64), user_feats[start:stop]
            )
        table.setflags(write=False)
        self.table = table
        return True
