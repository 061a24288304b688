"""The factored form of a separable rating head (contract/rating_factors.py), for the bundle.

Written only for a model that gives its rating in that form (`FactoredRating`: the
student; the teacher's MF component has it too, but the teacher's blended rating does
not), and only after its matrices rate random known (user, item) pairs as the model's
exported rating graph does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.rating_factors import RatingFactors, rating_factor_files
from contract.ratings import DEFAULT_RATING_SCALE, RatingScale, clip_ratings
from contract.session import graph_inputs, open_session, run_rating
from contract.signature import RATING_OUTPUTS
from training.export import PARITY_ATOL, ExportError, ort_feed
from training.features import FeatureTables, make_batch
from training.models.base import FactoredRating, TwoHeadModel

log = logging.getLogger(__name__)

_CHUNK = 65536
_PARITY_PAIRS = 512


@dataclass(frozen=True)
class RatingFactorArtifacts:
    users: Path
    items: Path
    dim: int
    offset: float
    parity_max_abs_diff: float

    def to_state(self) -> dict[str, Any]:
        """JSON form for the pipeline's step state (file names relative to the work dir)."""
        return {
            "users": self.users.name,
            "items": self.items.name,
            "dim": self.dim,
            "offset": self.offset,
            "parity_max_abs_diff": self.parity_max_abs_diff,
        }


@torch.no_grad()
def factor_matrices(model: FactoredRating, tables: FeatureTables) -> RatingFactors:
    """Rows 0..n_users of the user side (each user with its own feature row) and rows
    1..n_items of the item side, as float32."""
    n_users = tables.user_feats.shape[0] - 1
    n_items = tables.item_feats.shape[0] - 1
    users = [
        model.user_rating_factors(
            torch.as_tensor(ids), torch.as_tensor(tables.user_feats[ids])
        ).numpy()
        for ids in _chunks(0, n_users + 1)
    ]
    items = [
        model.item_rating_factors(
            torch.as_tensor(ids),
            torch.as_tensor(tables.item_feats[ids]),
            torch.as_tensor(tables.item_genres[ids]),
        ).numpy()
        for ids in _chunks(1, n_items + 1)
    ]
    return RatingFactors(
        users=np.ascontiguousarray(np.concatenate(users), dtype=np.float32),
        items=np.ascontiguousarray(np.concatenate(items), dtype=np.float32),
        offset=model.rating_offset(),
    )


def _chunks(start: int, stop: int) -> list[np.ndarray]:
    return [
        np.arange(first, min(first + _CHUNK, stop), dtype=np.int64)
        for first in range(start, stop, _CHUNK)
    ]


def factor_parity(
    factors: RatingFactors,
    rating_graph: Path,
    tables: FeatureTables,
    *,
    seed: int,
    scale: RatingScale = DEFAULT_RATING_SCALE,
) -> float:
    """Max |clipped factored rating - rating graph's| over random known users and items."""
    rng = np.random.default_rng(seed)
    n_users = factors.users.shape[0] - 1
    n_items = factors.items.shape[0]
    user = rng.integers(1, n_users + 1, _PARITY_PAIRS).astype(np.int64)
    item = rng.integers(1, n_items + 1, _PARITY_PAIRS).astype(np.int64)
    session = open_session(rating_graph, intra_op_threads=1, needs=RATING_OUTPUTS)
    feed = ort_feed(make_batch(tables, user, item))
    names = graph_inputs(session, file=rating_graph.name, needs=RATING_OUTPUTS)
    want = run_rating(session, feed, inputs=names).astype(np.float64)
    got = clip_ratings(factors.rate(user, item), scale).astype(np.float64)
    return float(np.max(np.abs(got - want)))


def export_rating_factors(
    model: TwoHeadModel,
    tables: FeatureTables,
    rating_graph: Path,
    *,
    out_dir: Path,
    stem: str,
    seed: int = 0,
) -> RatingFactorArtifacts | None:
    """Writes `stem`'s rating factors when its rating head is separable, else None."""
    if not isinstance(model, FactoredRating):
        return None
    model.eval()
    factors = factor_matrices(model, tables)
    diff = factor_parity(factors, rating_graph, tables, seed=seed, scale=model.rating_bounds)
    if not diff <= PARITY_ATOL:
        raise ExportError(f"{stem}: factored ratings differ from the rating graph by {diff:.3g}")
    names = rating_factor_files(stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    users, items = out_dir / names["users"], out_dir / names["items"]
    np.save(users, factors.users, allow_pickle=False)
    np.save(items, factors.items, allow_pickle=False)
    dim = int(factors.users.shape[1])
    log.info("%s rating factors: dim %d, parity %.3g", stem, dim, diff)
    return RatingFactorArtifacts(users, items, dim, factors.offset, diff)
