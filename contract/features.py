"""The feature map (`feature_map.json`) and the one set of rules that turns raw values into indices.

Training encodes its data with `FieldSpec.encode` and the service encodes cold-start query
parameters with the same function, so the two agree by construction. The rules
(docs/contracts.md section 1):

- index 0 always means "unknown": None, an empty or blank string, a boolean, NaN, ±infinity,
  a value of any other type, and every value the field has never seen encode as 0;
- strings lose surrounding whitespace first;
- `categorical`: the exact value, else its case-insensitive (casefold) match when exactly
  one known value has that spelling; `prefix`: the same on the first `length` characters;
  integers count as their decimal text, integral floats as the integer (2.0 -> "2");
- `bucket`: numbers and numeric strings go to `1 + number of edges <= value`, so values below
  the first edge land in the first bucket and values past the last edge in the last one;
- `none`: always 0 (a placeholder that keeps every ONNX shape non-empty).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.errors import BundleError
from contract.ratings import DEFAULT_RATING_SCALE, RatingScale, check_rating_scale

FEATURE_SCHEMA_VERSION = 1

FieldKind = Literal["categorical", "bucket", "prefix", "none"]
FIELD_KINDS: tuple[str, ...] = get_args(FieldKind)
UNKNOWN = 0


def _as_text(raw: object) -> str | None:
    """The text a categorical or prefix field matches, or None for an unknown value."""
    if isinstance(raw, bool | np.bool_):
        return None  # true/false name no category; refusing beats matching "True"
    if isinstance(raw, str):
        return raw.strip() or None
    if isinstance(raw, int | np.integer):
        return str(int(raw))
    if isinstance(raw, float | np.floating):
        number = float(raw)
        if not math.isfinite(number):
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    return None


def _as_number(raw: object) -> float | None:
    """The finite number a bucket field places, or None for an unknown value."""
    if isinstance(raw, bool | np.bool_):
        return None
    if isinstance(raw, int | float | np.integer | np.floating):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class FieldSpec:
    """One single-valued field of users or items. Index 0 always means 'unknown'."""

    name: str
    kind: FieldKind
    values: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    length: int = 0

    def __post_init__(self) -> None:
        # Lists from JSON or callers become tuples, so specs stay hashable and immutable.
        object.__setattr__(self, "values", tuple(str(v) for v in self.values))
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        self._validate()

    @cached_property
    def _lookup(self) -> tuple[dict[str, int], dict[str, int]]:
        """(exact value -> index, casefolded value -> index or 0 when ambiguous)."""
        exact = {value: position + 1 for position, value in enumerate(self.values)}
        folded: dict[str, int] = {}
        for value, index in exact.items():
            key = value.casefold()
            # Two values that differ only by case make the case-insensitive match ambiguous.
            folded[key] = UNKNOWN if key in folded else index
        return exact, folded

    def _validate(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r} is not one of {FIELD_KINDS}")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"field {self.name!r}: values are not unique")
        if self.kind == "bucket":
            if not all(math.isfinite(e) for e in self.edges):
                raise ValueError(f"field {self.name!r}: bucket edges must be finite")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise ValueError(f"field {self.name!r}: bucket edges must increase strictly")
        if self.kind == "prefix" and self.length < 1:
            raise ValueError(f"field {self.name!r}: a prefix field needs length >= 1")

    @property
    def vocab(self) -> int:
        """Embedding rows of the field, the unknown index 0 included."""
        if self.kind == "bucket":
            return len(self.edges) + 2
        if self.kind == "none":
            return 1
        return len(self.values) + 1

    def encode(self, raw: object) -> int:
        """Local index 0..vocab-1 of a raw value by the rules of the module docstring."""
        if raw is None or self.kind == "none":
            return UNKNOWN
        if self.kind == "bucket":
            number = _as_number(raw)
            return UNKNOWN if number is None else 1 + bisect.bisect_right(self.edges, number)
        text = _as_text(raw)
        if text is None:
            return UNKNOWN
        if self.kind == "prefix":
            text = text[: self.length]
        exact, folded = self._lookup
        index = exact.get(text)
        return index if index is not None else folded.get(text.casefold(), UNKNOWN)

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
        """A field from its JSON form; raises BundleError when it is malformed."""
        try:
            return _FieldDoc.model_validate(data).to_spec()
        except (ValidationError, ValueError) as exc:
            raise BundleError(f"feature map field is invalid: {exc}") from exc


NONE_FIELD = FieldSpec(name="none", kind="none")


@dataclass(frozen=True)
class FeatureMap:
    """Fields and vocabulary sizes of one data set, as every model sees them."""

    n_users: int
    n_items: int
    user_fields: tuple[FieldSpec, ...] = (NONE_FIELD,)
    item_fields: tuple[FieldSpec, ...] = (NONE_FIELD,)
    genres: tuple[str, ...] = ("(none)",)
    # (low, high) the models clip ratings to: [1, 5], widened down to the data's lowest
    # rating (MovieLens' latest sets have half stars from 0.5).
    rating_scale: RatingScale = DEFAULT_RATING_SCALE
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

    def encode_user(self, values: Mapping[str, object]) -> np.ndarray:
        """A user feature row int64 [Fu] from raw values by field name (missing -> 0)."""
        return np.array([f.encode(values.get(f.name)) for f in self.user_fields], dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "user_fields": [f.to_json() for f in self.user_fields],
            "item_fields": [f.to_json() for f in self.item_fields],
            "multi_fields": [{"name": "genres", "values": list(self.genres)}],
            "rating_scale": list(self.rating_scale),
        }

    @classmethod
    def from_json(cls, data: Any) -> FeatureMap:
        """A feature map from its JSON form; raises BundleError (a ValueError) when invalid."""
        schema = data.get("schema_version") if isinstance(data, dict) else None
        if schema != FEATURE_SCHEMA_VERSION:
            raise BundleError(
                f"feature map schema_version {schema!r} is not {FEATURE_SCHEMA_VERSION}"
            )
        try:
            return _FeatureMapDoc.model_validate(data).to_feature_map()
        except (ValidationError, ValueError) as exc:
            raise BundleError(f"feature_map.json is invalid: {exc}") from exc

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- JSON schema


class _FieldDoc(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    kind: FieldKind
    vocab: int = Field(ge=1)
    values: list[str] = Field(default_factory=list)
    edges: list[float] = Field(default_factory=list)
    length: int = Field(default=0, ge=0)

    def to_spec(self) -> FieldSpec:
        spec = FieldSpec(
            name=self.name,
            kind=self.kind,
            values=tuple(self.values) if self.kind in ("categorical", "prefix") else (),
            edges=tuple(self.edges) if self.kind == "bucket" else (),
            length=self.length if self.kind == "prefix" else 0,
        )
        # A stored vocab that disagrees with the rules means the models were built on another map.
        if spec.vocab != self.vocab:
            raise ValueError(
                f"field {self.name!r}: vocab {self.vocab}, its values imply {spec.vocab}"
            )
        return spec


class _MultiFieldDoc(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    values: list[str] = Field(min_length=1)


class _FeatureMapDoc(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Literal[1]
    n_users: int = Field(ge=0)
    n_items: int = Field(ge=1)
    user_fields: list[_FieldDoc] = Field(min_length=1)
    item_fields: list[_FieldDoc] = Field(min_length=1)
    multi_fields: list[_MultiFieldDoc] = Field(default_factory=list)
    # Absent in maps written before it was recorded: those models clip to the default.
    rating_scale: tuple[float, float] = DEFAULT_RATING_SCALE

    def to_feature_map(self) -> FeatureMap:
        genres = self.multi_fields[0].values if self.multi_fields else ["(none)"]
        return FeatureMap(
            n_users=self.n_users,
            n_items=self.n_items,
            user_fields=tuple(f.to_spec() for f in self.user_fields),
            item_fields=tuple(f.to_spec() for f in self.item_fields),
            genres=tuple(genres),
            rating_scale=check_rating_scale(self.rating_scale),
        )
