"""The bundle: contents, manifest validation and the atomic `current` switch."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.layout import sha256_file
from training import bundle as bundle_mod
from training import export
from training.bundle import BundleError, verify_bundle
from training.data import Dataset, load_dataset, make_split
from training.features import FeatureMap
from training.models.student import Student, StudentShape
from training.towers import export_towers


@pytest.fixture()
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle_dir.name
    shutil.copytree(bundle_dir, target)
    return target


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _rewrite_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


# ---------------------------------------------------------------- contents


def test_built_bundle_verifies_and_follows_the_contract(
    models_root: Path, bundle_dir: Path
) -> None:
    manifest = verify_bundle(bundle_dir)
    assert (models_root / "current").is_symlink()
    assert os.readlink(models_root / "current") == bundle_dir.name  # relative link
    assert manifest["version"] == bundle_dir.name
    assert manifest["schema_version"] == 2 and manifest["feature_schema_version"] == 1
    assert set(manifest["dataset"]) >= {"name", "split", "fingerprint"}
    assert manifest["dataset"]["split"] == "u1"
    assert set(manifest["training"]) >= {"teacher", "student"}
    assert {"teacher", "student"} <= set(manifest["models"])
    for key, entry in manifest["models"].items():
        assert entry["file"] == bundle_mod.MODEL_FILES[key]
        assert entry["sha256"] == sha256_file(bundle_dir / entry["file"])
        assert entry["onnx_bytes"] == (bundle_dir / entry["file"]).stat().st_size
        assert entry["params"] > 0 and entry["latency_ms"] > 0
        assert set(entry["metrics"]) == set(bundle_mod.METRIC_KEYS)
        assert 0.0 < entry["metrics"]["rmse"] < 2.0
        rating = entry["rating_graph"]
        assert rating["file"] == bundle_mod.RATING_GRAPH_FILES[key]
        assert rating["sha256"] == sha256_file(bundle_dir / rating["file"])
        assert 0.0 <= rating["parity_max_abs_diff"] <= 1e-4
    for key in ("feature_map", "id_maps", "features", "seen", "items", "popular"):
        assert (bundle_dir / manifest["files"][key]["file"]).is_file()
    # No NaN/Infinity anywhere: the service parses the manifest with a strict JSON reader.
    json.loads((bundle_dir / "manifest.json").read_text(), parse_constant=pytest.fail)


def test_bundle_data_files_match_the_training_data(
    bundle_dir: Path, synthetic_ml100k: Path
) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    train = make_split(ds, split="u1").train
    ids = json.loads((bundle_dir / "id_maps.json").read_text())
    assert ids == {"users": ds.user_ids, "items": ds.item_ids}
    assert FeatureMap.load(bundle_dir / "feature_map.json") == ds.feature_map
    with np.load(bundle_dir / "seen.npz") as seen:
        indptr, indices = seen["indptr"], seen["indices"]
    assert indptr.dtype == np.int64 and indices.dtype == np.int64
    user = int(train.user[0])
    expected = np.unique(train.item[train.user == user])
    np.testing.assert_array_equal(indices[indptr[user] : indptr[user + 1]], expected)
    popular = json.loads((bundle_dir / "popular.json").read_text())
    counts = np.bincount(train.item, minlength=ds.feature_map.n_items + 1)
    assert popular[0] == ds.item_ids[int(np.argmax(counts)) - 1]
    assert len(popular) == ds.feature_map.n_items
    items = json.loads((bundle_dir / "items.json").read_text())
    assert items[0]["item_id"] == ds.item_ids[0] and items[0]["title"].startswith("Movie")


# ---------------------------------------------------------------- validation errors


def test_missing_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "seen.npz").unlink()
    with pytest.raises(BundleError, match=r"seen\.npz: missing"):
        verify_bundle(bundle_copy)


def test_missing_model_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "student.onnx").unlink()
    with pytest.raises(BundleError, match=r"student\.onnx: missing"):
        verify_bundle(bundle_copy)


def test_tampered_file_fails_the_hash(bundle_copy: Path) -> None:
    path = bundle_copy / "popular.json"
    path.write_text(path.read_text().replace('"', "'", 2))
    with pytest.raises(BundleError, match=r"popular\.json: sha256 .* does not match"):
        verify_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["teacher.onnx", "teacher.rating.onnx"])
def test_tampered_model_fails_the_hash(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{re.escape(name)}: sha256"):
        verify_bundle(bundle_copy)


def test_a_rating_graph_without_the_contract_signature_is_refused(bundle_copy: Path) -> None:
    # The user tower in the rating graph's place, with a matching hash: no item input.
    name = bundle_mod.RATING_GRAPH_FILES["student"]
    shutil.copyfile(bundle_copy / "student.user_tower.onnx", bundle_copy / name)
    manifest = _manifest(bundle_copy)
    manifest["models"]["student"]["rating_graph"]["sha256"] = sha256_file(bundle_copy / name)
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="student rating graph"):
        verify_bundle(bundle_copy)


def test_wrong_sha256_in_manifest(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["files"]["items"]["sha256"] = "0" * 64
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=r"items\.json: sha256 .* manifest's '0000"):
        verify_bundle(bundle_copy)


@pytest.mark.parametrize(("key", "reads"), [("schema_version", 2), ("feature_schema_version", 1)])
def test_unknown_schema_version(bundle_copy: Path, key: str, reads: int) -> None:
    manifest = _manifest(bundle_copy)
    manifest[key] = 99
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=rf"unknown {key} 99 \(this build reads {reads}; rebuild"):
        verify_bundle(bundle_copy)


def test_missing_or_broken_manifest(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest missing"):
        verify_bundle(bundle_copy)


def test_manifest_cannot_point_outside_the_bundle(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["files"]["items"]["file"] = "../items.json"
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="not a plain file"):
        verify_bundle(bundle_copy)


def test_model_from_another_bundle_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["version"] = "some-other-version"
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="built for bundle"):
        verify_bundle(bundle_copy)


# ---------------------------------------------------------------- atomic publishing


def _contents(ds: Dataset, work: Path, version: str) -> bundle_mod.BundleContents:
    """Contents with two real (small, untrained) exported models for `version`."""
    fm = ds.feature_map
    models = {}
    for seed, key in enumerate(("teacher", "student")):
        torch.manual_seed(seed)
        model = Student(fm, shape=StudentShape().scaled(0.1))
        path = export.export_onnx(
            model, fm, work / f"{version}-{key}.onnx", metadata={"bundle_version": version}
        )
        metrics = {name: 0.5 for name in bundle_mod.METRIC_KEYS}
        towers = export_towers(
            model,
            ds.tables,
            fm,
            out_dir=work / f"{version}-{key}",
            stem=key,
            metadata={"bundle_version": version},
        )
        retrieval = bundle_mod.RetrievalFiles(
            user_tower=towers.user_tower,
            items=towers.items,
            rows=fm.n_items,
            dim=towers.dim,
            parity_max_abs_diff=towers.parity_max_abs_diff,
        )
        models[key] = bundle_mod.ModelArtifact(
            source=path, params=7, metrics=metrics, latency_ms=0.1, retrieval=retrieval
        )
    return bundle_mod.BundleContents(
        version=version,
        dataset=ds,
        split="none",
        train=ds.ratings,
        models=models,
        training={"teacher": {}, "student": {}},
        report_md="# r\n",
        metrics={},
    )


@pytest.fixture()
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k, dataset="ml-100k")


def test_new_bundle_becomes_current(dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "models"
    first = bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v1"))
    assert bundle_mod.current_bundle(out) == first.resolve()
    second = bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v2"))
    assert bundle_mod.current_bundle(out) == second.resolve()
    assert verify_bundle(out / "current")["version"] == "v2"
    assert sorted(p.name for p in out.iterdir()) == ["current", "v1", "v2"]
    with pytest.raises(BundleError, match="already exists"):
        bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v2"))


def test_interrupted_write_leaves_old_bundle_current(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    old = bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v1"))
    new_contents = _contents(dataset, tmp_path, "v2")
    real_copy = shutil.copyfile
    copied: list[str] = []

    def crash_midway(src: str, dst: str) -> str:
        # The first model file lands, then the "process dies" writing the second.
        if copied:
            raise OSError("simulated crash while writing the bundle")
        copied.append(str(dst))
        return real_copy(src, dst)

    monkeypatch.setattr(bundle_mod.shutil, "copyfile", crash_midway)
    with pytest.raises(OSError, match="simulated crash"):
        bundle_mod.write_bundle(out, new_contents)
    assert copied, "the crash must happen in the middle of the write"
    assert bundle_mod.current_bundle(out) == old.resolve()
    assert verify_bundle(out / "current")["version"] == "v1"
    # Neither a half-written bundle nor a staging folder is left behind.
    assert sorted(p.name for p in out.iterdir()) == ["current", "v1"]


def test_bundle_failing_verification_is_never_published(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    old = bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v1"))
    contents = _contents(dataset, tmp_path, "v2")
    # A model exported for another bundle version fails verification inside write_bundle.
    contents.models["student"].source = old / "student.onnx"
    with pytest.raises(BundleError, match="built for bundle 'v1'"):
        bundle_mod.write_bundle(out, contents)
    assert bundle_mod.current_bundle(out) == old.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["current", "v1"]


def test_crash_before_switch_keeps_old_current(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    old = bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v1"))

    def die(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_mod.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v2"))
    assert bundle_mod.current_bundle(out) == old.resolve()
    # The complete new bundle exists and verifies; only the switch did not happen.
    assert verify_bundle(out / "v2")["version"] == "v2"


def test_unsafe_version_and_missing_teacher_are_refused(dataset: Dataset, tmp_path: Path) -> None:
    contents = _contents(dataset, tmp_path, "v1")
    contents.version = "../escape"
    with pytest.raises(BundleError, match="not a safe folder name"):
        bundle_mod.write_bundle(tmp_path / "models", contents)
    contents = _contents(dataset, tmp_path, "v1")
    del contents.models["teacher"]
    with pytest.raises(BundleError, match="needs a teacher"):
        bundle_mod.write_bundle(tmp_path / "models", contents)
    assert bundle_mod.current_bundle(tmp_path / "models") is None


def test_current_as_real_folder_is_not_clobbered(dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "models"
    (out / "current").mkdir(parents=True)
    (out / "current" / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="is a real folder, not a link"):
        bundle_mod.write_bundle(out, _contents(dataset, tmp_path, "v1"))
    assert (out / "current" / "keep.txt").read_text() == "mine"
    assert verify_bundle(out / "v1")["version"] == "v1"  # complete, just not current


def test_metrics_go_into_the_manifest_all_or_none(caplog: pytest.LogCaptureFixture) -> None:
    # A test split without a rating of 4 or more leaves the ranking metrics undefined (NaN).
    defined = {"rmse": 0.9, "mae": 0.7, "recall@10": 0.2, "ndcg@10": 0.3, "hr@10": 0.6,
               "coverage@10": 0.1}  # fmt: skip
    assert bundle_mod._complete_metrics("teacher", defined) == defined
    partial = {**defined, "recall@10": math.nan, "ndcg@10": math.nan}
    assert bundle_mod._complete_metrics("teacher", partial) == {}
    assert "teacher: recall@10, ndcg@10 undefined" in caplog.text
    assert bundle_mod._complete_metrics("student", {}) == {}
