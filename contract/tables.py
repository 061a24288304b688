"""The bundle's data files, read and checked against the feature map and each other.

After `load_tables` succeeds every array has the shape the feature map implies, so the
service can index them blindly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from contract.errors import BundleError
from contract.features import FeatureMap
from contract.manifest import Manifest


@dataclass(frozen=True)
class FeatureTables:
    """Per-user and per-item feature rows (`features.npz`); row 0 is the unknown user or item."""

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


@dataclass(frozen=True)
class BundleTables:
    """Everything in a bundle's data files, checked for consistency."""

    feature_map: FeatureMap
    user_ids: tuple[str, ...]  # raw id of user index p + 1
    item_ids: tuple[str, ...]
    features: FeatureTables
    seen_indptr: npt.NDArray[np.int64]  # [n_users+2]
    seen_indices: npt.NDArray[np.int64]  # item indices 1..n_items
    items: list[Any]  # items.json entries in index order
    popular: list[str]  # raw item ids, most popular first


def load_tables(directory: Path, manifest: Manifest) -> BundleTables:
    """Reads and cross-checks the data files the manifest names; raises BundleError."""
    files = _DataFiles(Path(directory), manifest)
    feature_map = FeatureMap.from_json(files.json("feature_map"))
    # The manifest is not hashed (it holds the hashes): the one value both files carry
    # must agree, or the service would clip ratings and check feedback on another scale.
    if tuple(manifest.rating_scale) != tuple(feature_map.rating_scale):
        raise BundleError(
            f"manifest.json's rating_scale {list(manifest.rating_scale)} differs from "
            f"feature_map.json's {list(feature_map.rating_scale)}"
        )
    user_ids, item_ids = _id_maps(files, feature_map)
    features = _features(files, feature_map)
    indptr, indices = _seen(files, feature_map)
    items = files.json("items")
    if not isinstance(items, list) or len(items) != feature_map.n_items:
        raise BundleError(f"items.json must list {feature_map.n_items} items")
    popular = files.json("popular")
    if not isinstance(popular, list):
        raise BundleError("popular.json must be a list of item ids")
    return BundleTables(
        feature_map=feature_map,
        user_ids=user_ids,
        item_ids=item_ids,
        features=features,
        seen_indptr=indptr,
        seen_indices=indices,
        items=items,
        popular=[str(raw) for raw in popular],
    )


class _DataFiles:
    """Reads the data files of one bundle by manifest key, naming the file in every error."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest

    def path(self, key: str) -> Path:
        return self.directory / self.manifest.files[key].file

    def json(self, key: str) -> Any:
        path = self.path(key)
        try:
            return orjson.loads(path.read_bytes())
        except OSError as exc:
            raise BundleError(f"{path.name} cannot be read: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise BundleError(f"{path.name} is not valid JSON: {exc}") from exc

    def npz(self, key: str) -> dict[str, np.ndarray]:
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path.name} is not a readable npz file: {exc}") from exc


def _id_maps(files: _DataFiles, fm: FeatureMap) -> tuple[tuple[str, ...], tuple[str, ...]]:
    id_maps = files.json("id_maps")
    if not isinstance(id_maps, dict) or not {"users", "items"} <= id_maps.keys():
        raise BundleError("id_maps.json must hold 'users' and 'items' lists")
    user_ids = tuple(str(u) for u in id_maps["users"])
    item_ids = tuple(str(i) for i in id_maps["items"])
    if len(user_ids) != fm.n_users or len(item_ids) != fm.n_items:
        raise BundleError(
            f"id_maps.json has {len(user_ids)} users and {len(item_ids)} items, feature_map.json "
            f"says {fm.n_users} and {fm.n_items}"
        )
    return user_ids, item_ids


def _array(
    arrays: dict[str, np.ndarray],
    key: str,
    *,
    file: str,
    dtype: type,
    shape: tuple[int | None, ...],
) -> np.ndarray:
    """arrays[key] as `dtype` if its shape matches `shape` (None: any length on that axis)."""
    if key not in arrays:
        raise BundleError(f"{file}: array {key!r} is missing")
    array = arrays[key]
    expected = len(shape) == array.ndim and all(
        want is None or want == have for want, have in zip(shape, array.shape, strict=True)
    )
    if not expected:
        want = tuple("any" if n is None else n for n in shape)
        raise BundleError(
            f"{file}: array {key!r} has shape {array.shape}, the feature map implies {want}"
        )
    return np.ascontiguousarray(array, dtype=dtype)


def _check_vocab(table: np.ndarray, vocabs: list[int], *, file: str, key: str) -> None:
    """Every index of column c lies in 0..vocabs[c]-1: an index past its embedding table
    would make every request that touches the row fail inside the model."""
    if table.size == 0:
        return
    bad = (table < 0) | (table >= np.asarray(vocabs, dtype=np.int64)[None, :])
    if bad.any():
        row, column = (int(x) for x in np.argwhere(bad)[0])
        raise BundleError(
            f"{file}: {key}[{row}, {column}] = {int(table[row, column])} is outside the "
            f"field's vocabulary 0..{vocabs[column] - 1} ({int(bad.sum())} such values)"
        )


def _features(files: _DataFiles, fm: FeatureMap) -> FeatureTables:
    tables = _feature_arrays(files, fm)
    name = files.path("features").name
    _check_vocab(tables.user_feats, fm.user_field_vocabs, file=name, key="user_feats")
    _check_vocab(tables.item_feats, fm.item_field_vocabs, file=name, key="item_feats")
    if not np.isfinite(tables.item_genres).all():
        raise BundleError(f"{name}: item_genres holds NaN or infinite values")
    return tables


def _feature_arrays(files: _DataFiles, fm: FeatureMap) -> FeatureTables:
    arrays = files.npz("features")
    name = files.path("features").name
    return FeatureTables(
        user_feats=_array(
            arrays,
            "user_feats",
            file=name,
            dtype=np.int64,
            shape=(fm.user_vocab, len(fm.user_fields)),
        ),
        item_feats=_array(
            arrays,
            "item_feats",
            file=name,
            dtype=np.int64,
            shape=(fm.item_vocab, len(fm.item_fields)),
        ),
        item_genres=_array(
            arrays, "item_genres", file=name, dtype=np.float32, shape=(fm.item_vocab, fm.n_genres)
        ),
    )


def _seen(files: _DataFiles, fm: FeatureMap) -> tuple[np.ndarray, np.ndarray]:
    arrays = files.npz("seen")
    name = files.path("seen").name
    indptr = _array(arrays, "indptr", file=name, dtype=np.int64, shape=(fm.n_users + 2,))
    indices = _array(arrays, "indices", file=name, dtype=np.int64, shape=(None,))
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise BundleError(f"{name}: indptr is not a valid CSR index")
    if indices.size and (indices.min() < 1 or indices.max() > fm.n_items):
        raise BundleError(f"{name}: holds item indices outside 1..n_items")
    return indptr, indices
