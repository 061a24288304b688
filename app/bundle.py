"""The served bundle: a verified bundle folder turned into read-only lookup tables.

Manifest schema, checksums and data-file checks are the contract's (`contract.verify`,
docs/contracts.md section 2); this module only shapes what it returns for serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.errors import BundleError
from contract.features import FeatureMap
from contract.layout import MANIFEST, sha256_file
from contract.manifest import Manifest
from contract.ratings import RatingScale
from contract.verify import VerifiedBundle, verify_bundle

logger = logging.getLogger(__name__)

__all__ = ["Bundle", "BundleError", "load_bundle"]


@dataclass(frozen=True)
class Bundle:
    """Everything of one bundle that serving needs, verified and in numpy form.

    Immutable after loading: requests of several threads read it without locks.
    """

    directory: Path
    manifest: Manifest
    feature_map: FeatureMap
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
    # sha256 of manifest.json, which holds the sha256 of every file: a content hash of
    # the whole bundle, so caches tell two builds that share a version name apart.
    content_hash: str

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def rating_scale(self) -> RatingScale:
        return self.manifest.rating_scale

    def model_path(self, name: str) -> Path:
        entry = getattr(self.manifest.models, name, None)
        if entry is None:
            raise BundleError(f"bundle {self.version} has no model {name!r}")
        return self.directory / entry.file

    def rating_graph_path(self, name: str) -> Path | None:
        """The model's rating graph; None in a bundle from before rating graphs."""
        entry = getattr(self.manifest.models, name, None)
        if entry is None or entry.rating_graph is None:
            return None
        return self.directory / entry.rating_graph.file

    def has_model(self, name: str) -> bool:
        return getattr(self.manifest.models, name, None) is not None


def _read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # Shared read-only by all request threads; a write would be a bug, so make it raise.
    array.setflags(write=False)
    return array


def _titles(items: list[Any]) -> tuple[str, ...]:
    return tuple(str(entry.get("title", "")) if isinstance(entry, dict) else "" for entry in items)


def _popular(raw_ids: list[str], item_index: dict[str, int]) -> npt.NDArray[np.int64]:
    # Ids absent from the catalogue cannot be served; drop them instead of failing.
    positions = [item_index[raw] for raw in raw_ids if raw in item_index]
    return _read_only(np.array(positions, dtype=np.int64))


def _serving_view(verified: VerifiedBundle) -> Bundle:
    tables = verified.tables
    item_index = {raw: position + 1 for position, raw in enumerate(tables.item_ids)}
    return Bundle(
        directory=verified.directory,
        manifest=verified.manifest,
        feature_map=tables.feature_map,
        user_ids=tables.user_ids,
        item_ids=tables.item_ids,
        user_index={raw: position + 1 for position, raw in enumerate(tables.user_ids)},
        item_index=item_index,
        user_feats=_read_only(tables.features.user_feats),
        item_feats=_read_only(tables.features.item_feats),
        item_genres=_read_only(tables.features.item_genres),
        seen_indptr=_read_only(tables.seen_indptr),
        seen_indices=_read_only(tables.seen_indices),
        titles=_titles(tables.items),
        popular=_popular(tables.popular, item_index),
        content_hash=sha256_file(verified.directory / MANIFEST),
    )


def load_bundle(model_dir: Path) -> Bundle:
    """Resolve `model_dir` (often the `current` symlink), verify it and load its data files.

    The models are opened afterwards by the runners (app/inference.py), with the same
    contract session set-up, rather than twice here.
    """
    bundle = _serving_view(verify_bundle(model_dir, open_models=False))
    logger.info(
        "bundle loaded",
        extra={
            "version": bundle.version,
            "directory": str(bundle.directory),
            "users": bundle.n_users,
            "items": bundle.n_items,
        },
    )
    return bundle
