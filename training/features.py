"""Model inputs in training: batches of (user, item) pairs with their feature rows.

The feature map, its encoding rules and the feature tables are the bundle contract and
live in `contract/` (docs/contracts.md section 1); they are re-exported here so training
code has one place to import its inputs from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contract.features import FEATURE_SCHEMA_VERSION, NONE_FIELD, FeatureMap, FieldKind, FieldSpec
from contract.signature import INPUT_NAMES, OUTPUT_NAMES
from contract.tables import FeatureTables

__all__ = [
    "FEATURE_SCHEMA_VERSION",
    "INPUT_NAMES",
    "NONE_FIELD",
    "OUTPUT_NAMES",
    "Batch",
    "FeatureMap",
    "FeatureTables",
    "FieldKind",
    "FieldSpec",
    "make_batch",
]


@dataclass
class Batch:
    """Model inputs for B (user, item) pairs, in the order of the ONNX signature."""

    user: np.ndarray  # int64 [B]
    item: np.ndarray  # int64 [B]
    user_feats: np.ndarray  # int64 [B, Fu]
    item_feats: np.ndarray  # int64 [B, Fi]
    item_genres: np.ndarray  # float32 [B, G]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.user.shape[0])


def make_batch(tables: FeatureTables, users: np.ndarray, items: np.ndarray) -> Batch:
    """Gathers the feature rows of (user, item) index pairs."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    return Batch(
        user=users,
        item=items,
        user_feats=tables.user_feats[users],
        item_feats=tables.item_feats[items],
        item_genres=tables.item_genres[items],
    )
