"""Checking one bundle folder against the whole contract, the same way on both sides.

`training/` runs `verify_bundle(..., open_models=True)` before it publishes a bundle; the
service runs it with `open_models=False` and then opens the models itself with the same
`contract.session.open_session`, so no model is loaded twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from contract.errors import BundleError, ModelLoadError
from contract.features import FEATURE_SCHEMA_VERSION
from contract.layout import sha256_file
from contract.manifest import FileRef, Manifest, ModelEntry, read_manifest
from contract.rating_factors import load_rating_factors
from contract.session import open_session
from contract.signature import RATING_OUTPUTS
from contract.tables import BundleTables, load_tables
from contract.towers import load_item_matrix, open_tower_session


@dataclass(frozen=True)
class VerifiedBundle:
    directory: Path  # resolved: a `current` link is followed once, here
    manifest: Manifest
    tables: BundleTables


def resolve_bundle_dir(model_dir: Path) -> Path:
    """The real bundle folder behind `model_dir` (often the `current` symlink)."""
    try:
        directory = Path(model_dir).resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise BundleError(f"bundle directory {model_dir} does not exist") from exc
    except (OSError, ValueError) as exc:
        # A name too long, a NUL byte, no permission: a path that cannot be a bundle.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BundleError(f"bundle directory {str(model_dir)[:200]!r} unusable: {reason}") from exc
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} is not a directory")
    return directory


def _check_file(directory: Path, key: str, ref: FileRef) -> Path:
    path = directory / ref.file
    if not path.is_file():
        raise BundleError(f"{path}: missing ({key})")
    actual = sha256_file(path)
    if actual.lower() != ref.sha256.lower():
        raise BundleError(
            f"sha256 mismatch for {ref.file!r} ({key}): {path}: sha256 {actual} does not match "
            f"the manifest's {ref.sha256!r} (file changed after export)"
        )
    if isinstance(ref, ModelEntry) and ref.onnx_bytes != path.stat().st_size:
        raise BundleError(
            f"{path}: size {path.stat().st_size} != onnx_bytes {ref.onnx_bytes} in the manifest"
        )
    return path


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Every file the manifest names exists, has its sha256 and (models) its size."""
    for key, ref in manifest.file_refs().items():
        _check_file(directory, key, ref)


def verify_models(directory: Path, manifest: Manifest, *, n_users: int, n_items: int) -> None:
    """Every model loads in onnxruntime, has the contract signature and belongs to this bundle.

    The same for every user tower, and every item matrix and rating factor matrix has its
    manifest shape.
    """
    for key, entry in manifest.models.present().items():
        path = directory / entry.file
        try:
            session = open_session(path)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {key}: {exc}") from exc
        _check_metadata(path, session, manifest)
        if entry.rating_graph is not None:
            rating = directory / entry.rating_graph.file
            try:
                rating_session = open_session(rating, needs=RATING_OUTPUTS)
            except ModelLoadError as exc:
                raise ModelLoadError(f"{rating}: {key} rating graph: {exc}") from exc
            _check_metadata(rating, rating_session, manifest)
        if entry.retrieval is not None:
            tower = directory / entry.retrieval.user_tower.file
            _check_metadata(tower, open_tower_session(tower), manifest)
            load_item_matrix(
                directory / entry.retrieval.items.file,
                entry.retrieval.items,
                n_items=n_items,
            )
        if entry.rating_factors is not None:
            load_rating_factors(directory, entry.rating_factors, n_users=n_users, n_items=n_items)


def _check_metadata(path: Path, session: ort.InferenceSession, manifest: Manifest) -> None:
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("bundle_version") != manifest.version:
        raise BundleError(
            f"{path}: built for bundle {meta.get('bundle_version')!r}, "
            f"manifest says {manifest.version!r}"
        )
    if meta.get("feature_schema_version") != str(FEATURE_SCHEMA_VERSION):
        raise BundleError(
            f"{path}: feature_schema_version {meta.get('feature_schema_version')!r}, "
            f"this build reads {FEATURE_SCHEMA_VERSION}"
        )


def verify_bundle(model_dir: Path, *, open_models: bool = True) -> VerifiedBundle:
    """Checks a bundle completely and returns what it holds; raises BundleError saying why.

    Manifest schema and versions, every file's sha256 and the model sizes, the data files
    against the feature map, and with `open_models` every model in onnxruntime.
    """
    directory = resolve_bundle_dir(model_dir)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    tables = load_tables(directory, manifest)
    if open_models:
        verify_models(
            directory,
            manifest,
            n_users=tables.feature_map.n_users,
            n_items=tables.feature_map.n_items,
        )
    return VerifiedBundle(directory=directory, manifest=manifest, tables=tables)
