"""The two-stage form of a model for serving: user tower graph, item matrix, ANN index.

Every bundled model scores a pair as `user_tower(user) · item_tower(item)`, so the service
retrieves with one user-tower run and an inner-product search over the item matrix
computed here once, and runs the full pair graph only on the k items it returns.
Parity is checked against the full model's score output before anything is written.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from contract.towers import TOWER_INPUT_NAMES, TOWER_OUTPUT, open_tower_session, tower_files
from training.ann import AnnInfo, build_ivf, write_index
from training.evaluate import Scorer
from training.export import OPSET, PARITY_ATOL, ExportError, finish_graph, random_batch
from training.features import FeatureMap, FeatureTables
from training.models.base import TwoHeadModel, to_inputs

log = logging.getLogger(__name__)

ITEM_CHUNK = 65536
# Above this many items a bundle ships an IVF index; below it exact search is as fast.
ANN_MIN_ITEMS = 50_000
_PARITY_USERS = 64
_QUERY_SAMPLE = 512


class _UserTower(nn.Module):
    def __init__(self, model: TwoHeadModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, user: Tensor, user_feats: Tensor) -> Tensor:
        return self.model.user_tower(user, user_feats)  # [B, D]


@dataclass(frozen=True)
class TowerArtifacts:
    user_tower: Path
    items: Path
    ann: Path | None
    dim: int
    ann_info: AnnInfo | None
    parity_max_abs_diff: float

    def to_state(self) -> dict[str, Any]:
        """JSON form for the pipeline's step state (file names relative to the work dir)."""
        return {
            "user_tower": self.user_tower.name,
            "items": self.items.name,
            "ann": None if self.ann is None else self.ann.name,
            "dim": self.dim,
            "ann_info": None if self.ann_info is None else self.ann_info.as_dict(),
            "parity_max_abs_diff": self.parity_max_abs_diff,
        }


@torch.no_grad()
def item_matrix(model: TwoHeadModel, tables: FeatureTables) -> np.ndarray:
    """Item vectors of item indices 1..n_items as float32 [n_items, D] (row j: item j+1)."""
    n_items = tables.item_feats.shape[0] - 1
    parts = []
    for start in range(1, n_items + 1, ITEM_CHUNK):
        items = np.arange(start, min(start + ITEM_CHUNK, n_items + 1), dtype=np.int64)
        parts.append(
            model.item_tower(
                torch.as_tensor(items),
                torch.as_tensor(tables.item_feats[items]),
                torch.as_tensor(tables.item_genres[items]),
            ).numpy()
        )
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))


def export_user_tower(
    model: TwoHeadModel, feature_map: FeatureMap, path: Path, *, metadata: Mapping[str, str]
) -> Path:
    batch = random_batch(feature_map, 4, rng=np.random.default_rng(0))
    example = (torch.as_tensor(batch.user), torch.as_tensor(batch.user_feats))
    axes = {name: {0: "batch"} for name in (*TOWER_INPUT_NAMES, TOWER_OUTPUT)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                _UserTower(model),
                example,
                str(path),
                input_names=list(TOWER_INPUT_NAMES),
                output_names=[TOWER_OUTPUT],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    finish_graph(onnx.load(str(path)), path, metadata=metadata)
    return path


def tower_parity(
    model: TwoHeadModel,
    tower: Path,
    items: np.ndarray,
    tables: FeatureTables,
    feature_map: FeatureMap,
    *,
    seed: int,
) -> float:
    """Max |ONNX user tower · item matrix - full model score| on random users and items."""
    rng = np.random.default_rng(seed)
    batch = random_batch(feature_map, _PARITY_USERS, rng=rng)
    # The item side must be the catalogue's own rows for the item matrix to apply.
    batch.item = rng.integers(1, feature_map.n_items + 1, _PARITY_USERS).astype(np.int64)
    batch.item_feats = tables.item_feats[batch.item]
    batch.item_genres = tables.item_genres[batch.item]
    session = open_tower_session(tower)
    (vectors,) = session.run([TOWER_OUTPUT], {"user": batch.user, "user_feats": batch.user_feats})
    return _compare(model, vectors, items, batch)


@torch.no_grad()
def _compare(model: TwoHeadModel, vectors: np.ndarray, items: np.ndarray, batch: Any) -> float:
    model.eval()
    tables_item = items[batch.item - 1]  # [B, D]
    got = np.einsum("bd,bd->b", vectors.astype(np.float64), tables_item.astype(np.float64))
    _, want = model(*to_inputs(batch))
    return float(np.max(np.abs(got - want.numpy().astype(np.float64))))


def export_towers(
    model: TwoHeadModel,
    tables: FeatureTables,
    feature_map: FeatureMap,
    *,
    out_dir: Path,
    stem: str,
    metadata: Mapping[str, str],
    ann_min_items: int = ANN_MIN_ITEMS,
    seed: int = 0,
) -> TowerArtifacts:
    """Writes the contract's tower graph, item matrix and, when large, ANN index of `stem`."""
    names = tower_files(stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = item_matrix(model, tables)
    items_path = out_dir / names["items"]
    np.save(items_path, items, allow_pickle=False)
    tower = export_user_tower(model, feature_map, out_dir / names["user_tower"], metadata=metadata)
    diff = tower_parity(model, tower, items, tables, feature_map, seed=seed)
    if not diff <= PARITY_ATOL:
        raise ExportError(f"{tower}: tower score differs from the full model by {diff:.3g}")
    ann_path, info = None, None
    if items.shape[0] > ann_min_items:
        queries = sample_queries(tower, tables, feature_map, seed=seed)
        index, info = build_ivf(items, queries)
        ann_path = out_dir / names["ann"]
        write_index(index, ann_path)
    log.info("%s towers: dim %d, parity %.3g, ann %s", stem, items.shape[1], diff, info)
    return TowerArtifacts(tower, items_path, ann_path, items.shape[1], info, diff)


def sample_queries(
    tower: Path, tables: FeatureTables, feature_map: FeatureMap, *, seed: int
) -> np.ndarray:
    """The queries the index will answer: user vectors of real users of the data set, then
    the cold-start vectors (user index 0) of their side features, each distinct one once
    (a cold-start request searches the same index)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, feature_map.n_users + 1, _QUERY_SAMPLE).astype(np.int64)
    feats = tables.user_feats[users]
    cold_feats = np.unique(feats, axis=0)
    session = open_tower_session(tower)
    (known,) = session.run([TOWER_OUTPUT], {"user": users, "user_feats": feats})
    cold_users = np.zeros(cold_feats.shape[0], dtype=np.int64)
    (cold,) = session.run([TOWER_OUTPUT], {"user": cold_users, "user_feats": cold_feats})
    return np.concatenate([known, cold]).astype(np.float32)  # [Q + distinct feature rows, D]


def ort_tower_scorer(tower: Path, items: Path, tables: FeatureTables) -> Scorer:
    """Protocol P catalogue scorer of an exported model's two-stage form, as the service
    ranks: the ONNX user tower times the item matrix (item indices 1..n_items)."""
    session = open_tower_session(tower, intra_op_threads=1)
    matrix = np.load(items, allow_pickle=False)  # [n_items, D]

    def score(users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        feed = {"user": users, "user_feats": tables.user_feats[users]}
        (vectors,) = session.run([TOWER_OUTPUT], feed)
        return np.asarray(vectors @ matrix.T)  # [B, n_items]

    return score
