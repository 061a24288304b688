"""Bundle loading: manifest validation, checksums, symlinks (encoding rules: tests/contract)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.bundle import BundleError, load_bundle
from contract.layout import sha256_file
from contract.manifest import ItemMatrixRef
from contract.rating_factors import rating_factor_files
from contract.towers import load_item_matrix, tower_files
from tests.app.conftest import Reference, copy_bundle


def test_loads_a_valid_bundle_through_a_symlink(reference: Reference, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(reference.dir)
    bundle = load_bundle(link)
    assert bundle.directory == reference.dir
    assert bundle.version == reference.version
    assert list(bundle.user_ids) == reference.users
    assert list(bundle.item_ids) == reference.items
    assert bundle.user_index[reference.users[0]] == 1
    assert bundle.item_feats.shape[0] == len(reference.items) + 1
    assert [bundle.item_ids[p - 1] for p in bundle.popular.tolist()] == [
        i for i in reference.popular if i in set(reference.items)
    ]
    start, stop = bundle.seen_indptr[2], bundle.seen_indptr[3]
    assert {bundle.item_ids[i - 1] for i in bundle.seen_indices[start:stop]} == reference.seen(2)


def _edit_manifest(bundle: Path, change: dict[str, object]) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(change)
    path.write_text(json.dumps(manifest))


def _rehash(bundle: Path, key: str, name: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][key]["sha256"] = sha256_file(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_checksum_mismatch_names_the_file(reference: Reference, tmp_path: Path) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    items = bundle / "items.json"
    items.write_text(items.read_text().replace("Movie", "Film", 1))
    with pytest.raises(BundleError, match=r"sha256 mismatch for 'items.json'"):
        load_bundle(bundle)


def test_manifest_must_name_every_file(reference: Reference, tmp_path: Path) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["popular"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lacks popular"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 1}, "unknown schema_version 1"),
        ({"schema_version": 3}, "schema_version"),
        ({"version": ""}, "version"),
        ({"models": {"teacher": {"file": "teacher.onnx", "sha256": "0" * 64}}}, "student"),
    ],
)
def test_invalid_manifests_are_refused(
    reference: Reference, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    _edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


@pytest.mark.parametrize(
    "name",
    [
        tower_files("student")["items"],
        tower_files("student")["user_tower"],
        rating_factor_files("student")["users"],
        rating_factor_files("student")["items"],
    ],
)
def test_tampered_retrieval_and_rating_factor_files_are_refused(
    reference: Reference, tmp_path: Path, name: str
) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"sha256 mismatch for '{path.name}'"):
        load_bundle(bundle)


def test_an_item_matrix_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    ref = ItemMatrixRef(file="m.npy", sha256="0" * 64, rows=5, dim=3)
    np.save(tmp_path / "m.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(BundleError, match=r"float32 \(5, 3\)"):
        load_item_matrix(tmp_path / "m.npy", ref, n_items=5)
    np.save(tmp_path / "m.npy", np.full((5, 3), np.nan, np.float32))
    with pytest.raises(BundleError, match="NaN"):
        load_item_matrix(tmp_path / "m.npy", ref, n_items=5)


def test_out_of_vocabulary_feature_values_are_refused(reference: Reference, tmp_path: Path) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    with np.load(bundle / "features.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["user_feats"][3, 0] = 10_000
    np.savez(bundle / "features.npz", **arrays)
    _rehash(bundle, "features", "features.npz")
    with pytest.raises(BundleError, match=r"user_feats\[3, 0\] = 10000 is outside"):
        load_bundle(bundle)


def test_file_names_cannot_leave_the_bundle(reference: Reference, tmp_path: Path) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["items"]["file"] = "../items.json"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain name"):
        load_bundle(bundle)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "absent")
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)


def test_table_shapes_are_checked(reference: Reference, tmp_path: Path) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version="x")
    with np.load(bundle / "features.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["user_feats"] = arrays["user_feats"][:-1]
    np.savez(bundle / "features.npz", **arrays)
    _rehash(bundle, "features", "features.npz")
    with pytest.raises(BundleError, match="user_feats"):
        load_bundle(bundle)
