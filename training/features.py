"""The feature map shared by every model, and the tensors it describes.

The encoding rules here are the contract of docs/contracts.md section 1: the service
re-implements `encode` for cold-start query parameters, so change both together.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

FEATURE_SCHEMA_VERSION = 1

FieldKind = Literal["categorical", "bucket", "prefix", "none"]


@dataclass(frozen=True)
class FieldSpec:
    """One single-valued categorical field. Index 0 always means 'unknown'."""

    name: str
    kind: FieldKind
    values: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    length: int = 0

    @property
    def vocab(self) -> int:
        if self.kind == "bucket":
            return len(self.edges) + 2
        if self.kind == "none":
            return 1
        return len(self.values) + 1

    def encode(self, raw: object) -> int:
        """Local index of a raw value; 0 for missing or unseen values."""
        if raw is None or self.kind == "none":
            return 0
        if self.kind == "bucket":
            try:
                number = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return 0
            if not np.isfinite(number):
                return 0
            return 1 + bisect.bisect_right(self.edges, number)
        text = str(raw).strip()
        if self.kind == "prefix":
            text = text[: self.length]
        try:
            return self.values.index(text) + 1
        except ValueError:
            return 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "vocab": self.vocab}
        if self.kind in ("categorical", "prefix"):
            out["values"] = list(self.values)
        if self.kind == "prefix":
            out["length"] = self.length
        if self.kind == "bucket":
            out["edges"] = list(self.edges)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FieldSpec:
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            values=tuple(str(v) for v in data.get("values", ())),
            edges=tuple(float(e) for e in data.get("edges", ())),
            length=int(data.get("length", 0)),
        )


NONE_FIELD = FieldSpec(name="none", kind="none")


@dataclass(frozen=True)
class FeatureMap:
    """Fields and vocabulary sizes of one data set, as every model sees them."""

    n_users: int
    n_items: int
    user_fields: tuple[FieldSpec, ...] = (NONE_FIELD,)
    item_fields: tuple[FieldSpec, ...] = (NONE_FIELD,)
    genres: tuple[str, ...] = ("(none)",)
    schema_version: int = FEATURE_SCHEMA_VERSION

    @property
    def user_vocab(self) -> int:
        """Embedding rows for users, the unknown user 0 included."""
        return self.n_users + 1

    @property
    def item_vocab(self) -> int:
        return self.n_items + 1

    @property
    def user_field_vocabs(self) -> list[int]:
        return [f.vocab for f in self.user_fields]

    @property
    def item_field_vocabs(self) -> list[int]:
        return [f.vocab for f in self.item_fields]

    @property
    def n_genres(self) -> int:
        return len(self.genres)

    @property
    def n_fields(self) -> int:
        """Fields an FM-style model embeds: user, item, side fields and one genre bag."""
        return 2 + len(self.user_fields) + len(self.item_fields) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "user_fields": [f.to_json() for f in self.user_fields],
            "item_fields": [f.to_json() for f in self.item_fields],
            "multi_fields": [{"name": "genres", "values": list(self.genres)}],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureMap:
        if data.get("schema_version") != FEATURE_SCHEMA_VERSION:
            raise ValueError(
                f"feature map schema_version {data.get('schema_version')!r} is not "
                f"{FEATURE_SCHEMA_VERSION}"
            )
        multi = data.get("multi_fields") or [{"values": ["(none)"]}]
        return cls(
            n_users=int(data["n_users"]),
            n_items=int(data["n_items"]),
            user_fields=tuple(FieldSpec.from_json(f) for f in data["user_fields"]),
            item_fields=tuple(FieldSpec.from_json(f) for f in data["item_fields"]),
            genres=tuple(str(g) for g in multi[0]["values"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class FeatureTables:
    """Per-user and per-item feature rows; row 0 is the unknown user or item."""

    user_feats: np.ndarray  # int64 [n_users+1, Fu]
    item_feats: np.ndarray  # int64 [n_items+1, Fi]
    item_genres: np.ndarray  # float32 [n_items+1, G]

    def save(self, path: Path) -> None:
        np.savez(
            path,
            user_feats=self.user_feats,
            item_feats=self.item_feats,
            item_genres=self.item_genres,
        )

    @classmethod
    def load(cls, path: Path) -> FeatureTables:
        with np.load(path) as data:
            return cls(
                user_feats=data["user_feats"].astype(np.int64),
                item_feats=data["item_feats"].astype(np.int64),
                item_genres=data["item_genres"].astype(np.float32),
            )


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


INPUT_NAMES = ("user", "item", "user_feats", "item_feats", "item_genres")
OUTPUT_NAMES = ("rating", "score")


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
