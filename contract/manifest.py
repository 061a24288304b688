"""The manifest (`manifest.json`): its schema as pydantic models, and the one reader.

Schema version 2 (docs/contracts.md section 2). Unknown top-level keys and extra keys in
file and model entries are kept (a writer may add information); unknown model keys are
refused, since the service would not know how to serve them.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Literal, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contract.errors import BundleError
from contract.features import FEATURE_SCHEMA_VERSION
from contract.layout import MANIFEST, MODEL_FILES, REQUIRED_DATA_FILES, plain_file_name
from contract.ratings import DEFAULT_RATING_SCALE, RatingScale, check_rating_scale

# 2: every served model carries its retrieval artefacts (contract/towers.py).
MANIFEST_SCHEMA_VERSION = 2
MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists files: kilobytes, even for big bundles
# Protocol P metrics a model entry carries (all of them, or none when not measured).
METRIC_KEYS = ("rmse", "mae", "recall@10", "ndcg@10", "hr@10", "coverage@10")


class FileRef(BaseModel):
    """One file of the bundle and its sha256."""

    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("file")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return plain_file_name(value)


class MatrixRef(FileRef):
    """A float32 [rows, dim] `.npy` matrix of the bundle."""

    rows: int = Field(ge=1)
    dim: int = Field(ge=1)
    dtype: Literal["float32"] = "float32"


class ItemMatrixRef(MatrixRef):
    """A model's item vectors: float32 [rows, dim], row j is item index j + 1."""


class AnnRef(FileRef):
    """An inner-product ANN index over the item matrix, and what export measured of it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    kind: Literal["ivf_flat", "ivf_flat_sphere"]  # contract.towers: how it is searched
    nlist: int = Field(ge=1)
    nprobe: int = Field(ge=1)
    recall_at_10: float = Field(alias="recall@10", ge=0.0, le=1.0)


class RetrievalEntry(BaseModel):
    """The two-stage form of one model: user tower graph, item matrix, optional ANN index."""

    model_config = ConfigDict(extra="allow")

    user_tower: FileRef
    items: ItemMatrixRef
    ann: AnnRef | None = None
    parity_max_abs_diff: float = Field(ge=0.0)

    def file_refs(self, key: str) -> dict[str, FileRef]:
        refs: dict[str, FileRef] = {
            f"{key}.user_tower": self.user_tower,
            f"{key}.items": self.items,
        }
        if self.ann is not None:
            refs[f"{key}.ann"] = self.ann
        return refs


class RatingGraphRef(FileRef):
    """A model's rating graph (contract.layout.RATING_GRAPH_FILES) and its largest rating
    difference from the pair graph's, measured at export."""

    parity_max_abs_diff: float = Field(ge=0.0)


class RatingFactorsRef(BaseModel):
    """A separable rating head in factored form (contract/rating_factors.py): the rating of
    known user u and item i is `offset + users[u] · items[i - 1]`, clipped to the scale."""

    model_config = ConfigDict(extra="allow")

    users: MatrixRef
    items: MatrixRef
    offset: float
    parity_max_abs_diff: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _same_dim(self) -> Self:
        if self.users.dim != self.items.dim:
            raise ValueError(
                f"rating factors of users ({self.users.dim}) and items ({self.items.dim}) "
                "differ in width"
            )
        return self

    def file_refs(self, key: str) -> dict[str, FileRef]:
        return {f"{key}.rating_users": self.users, f"{key}.rating_items": self.items}


class ModelEntry(FileRef):
    """One ONNX model: its file, size and what training measured of it."""

    # The variants the service retrieves with have one; the INT8 student uses the student's.
    retrieval: RetrievalEntry | None = None
    # Absent in bundles written before it: the service then rates with the pair graph.
    rating_graph: RatingGraphRef | None = None
    # Only a model whose rating is a dot product of a user and an item side has factors.
    rating_factors: RatingFactorsRef | None = None
    params: int = Field(default=0, ge=0)
    onnx_bytes: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    latency_ms: float = 0.0

    @field_validator("metrics")
    @classmethod
    def _all_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        missing = [name for name in METRIC_KEYS if name not in value]
        if value and missing:
            raise ValueError(f"model metrics lack {', '.join(missing)}")
        return value


class ModelEntries(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: ModelEntry
    student: ModelEntry
    student_int8: ModelEntry | None = None

    @field_validator("teacher", "student")
    @classmethod
    def _retrieval(cls, value: ModelEntry) -> ModelEntry:
        if value.retrieval is None:
            raise ValueError("a served model needs its 'retrieval' entry (tower, item matrix)")
        return value

    def present(self) -> dict[str, ModelEntry]:
        """The models this bundle holds, by key (MODEL_FILES order)."""
        entries = {key: getattr(self, key) for key in MODEL_FILES}
        return {key: entry for key, entry in entries.items() if entry is not None}


class DatasetInfo(BaseModel):
    """Where the training data came from, and the rating scale the models predict on."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    split: str = ""
    fingerprint: str = ""
    # Absent in bundles written before it existed: those were all trained on 1..5.
    rating_scale: RatingScale = DEFAULT_RATING_SCALE

    @field_validator("rating_scale")
    @classmethod
    def _check_scale(cls, value: RatingScale) -> RatingScale:
        return check_rating_scale(value)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Literal[2]
    version: str = Field(min_length=1, max_length=200)
    created_at: str
    feature_schema_version: Literal[1]
    dataset: DatasetInfo = Field(default_factory=DatasetInfo)
    training: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileRef]
    models: ModelEntries

    @field_validator("files")
    @classmethod
    def _required_files(cls, value: dict[str, FileRef]) -> dict[str, FileRef]:
        missing = [name for name in REQUIRED_DATA_FILES if name not in value]
        if missing:
            raise ValueError(f"manifest 'files' lacks {', '.join(missing)}")
        return value

    @property
    def rating_scale(self) -> RatingScale:
        return self.dataset.rating_scale

    def file_refs(self) -> dict[str, FileRef]:
        """Every file the manifest names, data files, models and retrieval files, by key."""
        refs: dict[str, FileRef] = {**self.files, **self.models.present()}
        for key, entry in self.models.present().items():
            if entry.retrieval is not None:
                refs.update(entry.retrieval.file_refs(key))
            if entry.rating_graph is not None:
                refs[f"{key}.rating_graph"] = entry.rating_graph
            if entry.rating_factors is not None:
                refs.update(entry.rating_factors.file_refs(key))
        return refs

    def to_json(self) -> dict[str, Any]:
        """The manifest as its JSON object, keys as they were read (defaults not added)."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


def parse_manifest(raw: object, *, source: str) -> Manifest:
    """A validated Manifest from parsed JSON; `source` names the file in error messages."""
    if not isinstance(raw, dict):
        raise BundleError(f"{source} is invalid: expected a JSON object")
    # Checked before the schema so that a newer bundle gets a message naming the version.
    for key, known in (
        ("schema_version", MANIFEST_SCHEMA_VERSION),
        ("feature_schema_version", FEATURE_SCHEMA_VERSION),
    ):
        if raw.get(key) != known:
            raise BundleError(
                f"{source} is invalid: unknown {key} {raw.get(key)!r} (this build reads {known}; "
                "rebuild the bundle with `python -m training pipeline`)"
            )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{source} is invalid: {exc}") from exc


def read_manifest(directory: Path) -> Manifest:
    """The manifest of a bundle folder; raises BundleError saying what is wrong with it."""
    path = Path(directory) / MANIFEST
    try:
        # A FIFO or a device (a link to /dev/zero) would block or never end the read, and
        # hold a reload's lock with it; an outsized file is no manifest either.
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path} is not a regular file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {info.st_size} bytes, at most {MAX_MANIFEST_BYTES}")
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(
            f"no {MANIFEST} in {directory}: manifest missing (not a bundle, or an unfinished one)"
        ) from exc
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    return parse_manifest(raw, source=str(path))
