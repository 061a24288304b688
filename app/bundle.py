"""The model bundle: manifest validation, sha256 verification and loading of the data files.

Layout and field meanings are fixed by docs/contracts.md, section 2.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("feature_map", "id_maps", "features", "seen", "items", "popular")
_HASH_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle that cannot be served; the message says why."""


def _plain_file_name(value: str) -> str:
    # Names come from a file on disk; refuse anything that could point outside the bundle.
    if not value or "/" in value or "\\" in value or value in {".", ".."}:
        raise ValueError(f"file name must be a plain name inside the bundle, got {value!r}")
    return value


class FileRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("file")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _plain_file_name(value)


class ModelEntry(FileRef):
    params: int = Field(default=0, ge=0)
    onnx_bytes: int = Field(default=0, ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    latency_ms: float = 0.0


class ModelEntries(BaseModel):
    model_config = ConfigDict(extra="allow")

    teacher: ModelEntry
    student: ModelEntry
    student_int8: ModelEntry | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Literal[1]
    version: str = Field(min_length=1, max_length=200)
    created_at: str
    feature_schema_version: Literal[1]
    dataset: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileRef]
    models: ModelEntries

    @field_validator("files")
    @classmethod
    def _required_files(cls, value: dict[str, FileRef]) -> dict[str, FileRef]:
        missing = [name for name in REQUIRED_FILES if name not in value]
        if missing:
            raise ValueError(f"manifest 'files' lacks {', '.join(missing)}")
        return value


class FieldSpec(BaseModel):
    """One user or item field of feature_map.json."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str
    vocab: int = Field(ge=1)
    edges: list[float] = Field(default_factory=list)
    values: list[str] = Field(default_factory=list)
    length: int = Field(default=1, ge=1)

    def encode(self, raw: object) -> int:
        """Local index of a raw value by the rules of docs/contracts.md; 0 when unknown."""
        if raw is None:
            return 0
        if self.kind == "bucket":
            try:
                number = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return 0
            return 1 + sum(1 for edge in self.edges if edge <= number)
        text = str(raw)
        if self.kind == "prefix":
            text = text[: self.length]
        if self.kind in {"categorical", "prefix"}:
            try:
                return self.values.index(text) + 1
            except ValueError:
                return 0
        return 0


class MultiFieldSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    values: list[str]


class FeatureMapSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Literal[1]
    n_users: int = Field(ge=0)
    n_items: int = Field(ge=1)
    user_fields: list[FieldSpec] = Field(min_length=1)
    item_fields: list[FieldSpec] = Field(min_length=1)
    multi_fields: list[MultiFieldSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Bundle:
    """Everything of one bundle that serving needs, verified and in numpy form.

    Immutable after loading: requests of several threads read it without locks.
    """

    directory: Path
    manifest: Manifest
    feature_map: FeatureMapSpec
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    user_index: dict[str, int]
    item_index: dict[str, int]
    user_feats: npt.NDArray[np.int64]  # [n_users+1, Fu]
    item_feats: npt.NDArray[np.int64]  # [n_items+1, Fi]
    item_genres: npt.NDArray[np.float32]  # [n_items+1, G]
    seen_indptr: npt.NDArray[np.int64]  # [n_users+2]
    seen_indices: npt.NDArray[np.int64]  # item indices, 1-based
    titles: tuple[str, ...]  # by item position (index - 1)
    popular: npt.NDArray[np.int64]  # item indices, most popular first

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def model_path(self, name: str) -> Path:
        entry = getattr(self.manifest.models, name, None)
        if entry is None:
            raise BundleError(f"bundle {self.version} has no model {name!r}")
        return self.directory / entry.file

    def has_model(self, name: str) -> bool:
        return getattr(self.manifest.models, name, None) is not None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> Manifest:
    path = directory / "manifest.json"
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(f"no manifest.json in {directory}") from exc
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"manifest.json in {directory} is not valid JSON: {exc}") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"manifest.json in {directory} is invalid: {exc}") from exc


def verify_checksums(directory: Path, manifest: Manifest) -> None:
    """Check every file the manifest names against its sha256; raise on the first mismatch."""
    refs: list[tuple[str, FileRef]] = list(manifest.files.items())
    for name in ("teacher", "student", "student_int8"):
        entry = getattr(manifest.models, name)
        if entry is not None:
            refs.append((name, entry))
    for name, ref in refs:
        path = directory / ref.file
        if not path.is_file():
            raise BundleError(f"bundle file {ref.file!r} ({name}) is missing")
        actual = sha256_file(path)
        if actual.lower() != ref.sha256.lower():
            raise BundleError(
                f"sha256 mismatch for {ref.file!r} ({name}): manifest {ref.sha256}, file {actual}"
            )


def _load_json(directory: Path, manifest: Manifest, *, name: str) -> Any:
    path = directory / manifest.files[name].file
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"{path.name} is not valid JSON: {exc}") from exc


def _load_npz(directory: Path, manifest: Manifest, *, name: str) -> dict[str, np.ndarray]:
    path = directory / manifest.files[name].file
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path.name} is not a readable npz file: {exc}") from exc


def _array(
    arrays: dict[str, np.ndarray], key: str, *, dtype: type, rows: int | None, ndim: int
) -> np.ndarray:
    if key not in arrays:
        raise BundleError(f"npz array {key!r} is missing")
    array = arrays[key]
    if array.ndim != ndim or (rows is not None and array.shape[0] != rows):
        raise BundleError(
            f"npz array {key!r} has shape {array.shape}, expected {ndim}-d, {rows} rows"
        )
    if ndim == 2 and array.shape[1] < 1:
        raise BundleError(f"npz array {key!r} has no columns")
    array = np.ascontiguousarray(array, dtype=dtype)
    # Shared read-only by all request threads; a write would be a bug, so make it raise.
    array.setflags(write=False)
    return array


def load_bundle(model_dir: Path) -> Bundle:
    """Resolve `model_dir` (often the `current` symlink), verify it and load its data files."""
    try:
        directory = Path(model_dir).resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise BundleError(f"model directory {model_dir} does not exist") from exc
    if not directory.is_dir():
        raise BundleError(f"model directory {directory} is not a directory")
    manifest = read_manifest(directory)
    verify_checksums(directory, manifest)

    try:
        feature_map = FeatureMapSpec.model_validate(
            _load_json(directory, manifest, name="feature_map")
        )
    except ValidationError as exc:
        raise BundleError(f"feature_map.json is invalid: {exc}") from exc
    id_maps = _load_json(directory, manifest, name="id_maps")
    if not isinstance(id_maps, dict) or not {"users", "items"} <= id_maps.keys():
        raise BundleError("id_maps.json must hold 'users' and 'items' lists")
    user_ids = tuple(str(u) for u in id_maps["users"])
    item_ids = tuple(str(i) for i in id_maps["items"])
    if len(item_ids) != feature_map.n_items or len(user_ids) != feature_map.n_users:
        raise BundleError(
            f"id_maps.json has {len(user_ids)} users and {len(item_ids)} items, feature_map.json "
            f"says {feature_map.n_users} and {feature_map.n_items}"
        )
    n_users, n_items = len(user_ids), len(item_ids)

    features = _load_npz(directory, manifest, name="features")
    user_feats = _array(features, "user_feats", dtype=np.int64, rows=n_users + 1, ndim=2)
    item_feats = _array(features, "item_feats", dtype=np.int64, rows=n_items + 1, ndim=2)
    item_genres = _array(features, "item_genres", dtype=np.float32, rows=n_items + 1, ndim=2)
    if user_feats.shape[1] != len(feature_map.user_fields):
        raise BundleError(
            f"user_feats has {user_feats.shape[1]} columns, feature_map.json "
            f"{len(feature_map.user_fields)} user fields"
        )

    seen = _load_npz(directory, manifest, name="seen")
    indptr = _array(seen, "indptr", dtype=np.int64, rows=n_users + 2, ndim=1)
    indices = _array(seen, "indices", dtype=np.int64, rows=None, ndim=1)
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise BundleError("seen.npz indptr is not a valid CSR index")
    if indices.size and (indices.min() < 1 or indices.max() > n_items):
        raise BundleError("seen.npz holds item indices outside 1..n_items")

    items = _load_json(directory, manifest, name="items")
    if not isinstance(items, list) or len(items) != n_items:
        raise BundleError(f"items.json must list {n_items} items")
    titles = tuple(
        str(entry.get("title", "")) if isinstance(entry, dict) else "" for entry in items
    )

    popular_raw = _load_json(directory, manifest, name="popular")
    if not isinstance(popular_raw, list):
        raise BundleError("popular.json must be a list of item ids")
    item_index = {raw: position + 1 for position, raw in enumerate(item_ids)}
    # Ids absent from the catalogue cannot be served; drop them instead of failing.
    popular = np.array(
        [item_index[str(raw)] for raw in popular_raw if str(raw) in item_index], dtype=np.int64
    )
    popular.setflags(write=False)

    bundle = Bundle(
        directory=directory,
        manifest=manifest,
        feature_map=feature_map,
        user_ids=user_ids,
        item_ids=item_ids,
        user_index={raw: position + 1 for position, raw in enumerate(user_ids)},
        item_index=item_index,
        user_feats=user_feats,
        item_feats=item_feats,
        item_genres=item_genres,
        seen_indptr=indptr,
        seen_indices=indices,
        titles=titles,
        popular=popular,
    )
    logger.info(
        "bundle loaded",
        extra={
            "version": manifest.version,
            "directory": str(directory),
            "users": n_users,
            "items": n_items,
        },
    )
    return bundle
