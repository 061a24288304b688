"""The manifest schema: what it accepts and what it refuses, with the reason in the message."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contract.errors import BundleError
from contract.layout import DATA_FILES, MODEL_FILES, RATING_GRAPH_FILES, REQUIRED_DATA_FILES
from contract.manifest import (
    MAX_MANIFEST_BYTES,
    METRIC_KEYS,
    Manifest,
    parse_manifest,
    read_manifest,
)
from contract.ratings import DEFAULT_RATING_SCALE
from contract.towers import tower_files

SHA = "ab" * 32


def _entry(name: str) -> dict[str, Any]:
    return {"file": name, "sha256": SHA}


def _model(name: str) -> dict[str, Any]:
    return {
        **_entry(name),
        "params": 10,
        "onnx_bytes": 1234,
        "metrics": {key: 0.5 for key in METRIC_KEYS},
        "latency_ms": 0.2,
        "parity_max_abs_diff": 1e-6,  # writers may add facts to an entry
    }


def _served(key: str) -> dict[str, Any]:
    names = tower_files(key)
    return {
        **_model(MODEL_FILES[key]),
        "rating_graph": {**_entry(RATING_GRAPH_FILES[key]), "parity_max_abs_diff": 0.0},
        "retrieval": {
            "user_tower": _entry(names["user_tower"]),
            "items": {**_entry(names["items"]), "rows": 4, "dim": 3, "dtype": "float32"},
            "ann": {
                **_entry(names["ann"]),
                "kind": "ivf_flat",
                "nlist": 2,
                "nprobe": 1,
                "recall@10": 0.99,
            },
            "parity_max_abs_diff": 1e-6,
        },
    }


VALID: dict[str, Any] = {
    "schema_version": 2,
    "version": "20260101T000000Z-ml-100k-u1",
    "created_at": "2026-01-01T00:00:00Z",
    "feature_schema_version": 1,
    "dataset": {"name": "ml-100k", "split": "u1", "fingerprint": "f", "n_users": 3},
    "training": {"teacher": {}, "student": {}},
    "files": {key: _entry(name) for key, name in DATA_FILES.items()},
    "models": {key: _served(key) for key in ("teacher", "student")},
    "comment": "top-level extras are kept",
}


def _edited(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    edit(data)
    return data


def test_a_valid_manifest_is_accepted_and_round_trips() -> None:
    manifest = parse_manifest(VALID, source="m")
    assert manifest.version == VALID["version"]
    assert set(manifest.models.present()) == {"teacher", "student"}
    towers = {f"{key}.{part}" for key in ("teacher", "student") for part in tower_files(key)}
    ratings = {"teacher.rating_graph", "student.rating_graph"}
    assert set(manifest.file_refs()) == set(DATA_FILES) | {"teacher", "student"} | towers | ratings
    # Older bundles carry no rating scale: they were all trained on 1..5.
    assert manifest.rating_scale == DEFAULT_RATING_SCALE == (1.0, 5.0)
    assert manifest.to_json() == VALID


def test_the_rating_scale_comes_from_the_dataset_section() -> None:
    data = _edited(lambda d: d["dataset"].update(rating_scale=[0.5, 5]))
    assert parse_manifest(data, source="m").rating_scale == (0.5, 5.0)


def test_only_the_serving_files_are_required() -> None:
    data = _edited(lambda d: [d["files"].pop(k) for k in ("report", "metrics")])
    assert set(parse_manifest(data, source="m").files) == set(REQUIRED_DATA_FILES)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=1), r"unknown schema_version 1 \(this build reads 2"),
        (lambda d: d.pop("schema_version"), r"unknown schema_version None"),
        (lambda d: d.update(feature_schema_version=7), r"unknown feature_schema_version 7"),
        (lambda d: d.update(version=""), "version"),
        (lambda d: d.pop("created_at"), "created_at"),
        (lambda d: d["files"].pop("popular"), "lacks popular"),
        (lambda d: d["files"]["items"].update(file="../items.json"), "plain name"),
        (lambda d: d["files"]["items"].update(file="sub/items.json"), "not a plain file"),
        (lambda d: d["files"]["items"].update(sha256="xyz"), "sha256"),
        (lambda d: d["models"].pop("student"), "student"),
        (lambda d: d["models"].update(mystery=_model("m.onnx")), "mystery"),
        (lambda d: d["models"]["teacher"].pop("onnx_bytes"), "onnx_bytes"),
        (lambda d: d["models"]["teacher"].update(onnx_bytes=-1), "onnx_bytes"),
        (lambda d: d["models"]["teacher"]["metrics"].pop("rmse"), "metrics lack rmse"),
        (lambda d: d["dataset"].update(rating_scale=[5, 1]), "low < high"),
        (lambda d: d["models"]["student"].pop("retrieval"), "needs its 'retrieval' entry"),
        (lambda d: d["models"]["teacher"]["retrieval"]["items"].update(dtype="float64"), "dtype"),
        (lambda d: d["models"]["teacher"]["retrieval"]["items"].update(rows=0), "rows"),
        (lambda d: d["models"]["teacher"]["retrieval"]["ann"].update(kind="hnsw"), "kind"),
        (lambda d: d["models"]["teacher"]["retrieval"]["ann"].update(nprobe=0), "nprobe"),
        (
            lambda d: d["models"]["teacher"]["retrieval"]["user_tower"].update(file="../x"),
            "plain name",
        ),
        (lambda d: d["dataset"].update(rating_scale=[1, 2, 3]), "rating_scale"),
        (lambda d: d["models"]["teacher"]["rating_graph"].pop("parity_max_abs_diff"), "parity"),
        (lambda d: d["models"]["student"]["rating_graph"].update(file="../r.onnx"), "plain name"),
    ],
)
def test_invalid_manifests_are_refused(
    edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        parse_manifest(_edited(edit), source="manifest.json")


def test_bundles_from_before_rating_graphs_are_accepted() -> None:
    data = _edited(lambda d: [entry.pop("rating_graph") for entry in d["models"].values()])
    manifest = parse_manifest(data, source="m")
    assert manifest.models.teacher.rating_graph is None
    assert not any(key.endswith(".rating_graph") for key in manifest.file_refs())


def test_models_without_metrics_are_accepted() -> None:
    data = _edited(lambda d: d["models"]["student"].update(metrics={}))
    assert parse_manifest(data, source="m").models.student.metrics == {}


def test_read_manifest_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json .*manifest missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    # The strict reader refuses NaN: a writer must never produce it.
    (tmp_path / "manifest.json").write_text(json.dumps(_edited(lambda d: d.update(x=float("nan")))))
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(BundleError, match="invalid: expected a JSON object"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(VALID))
    assert isinstance(read_manifest(tmp_path), Manifest)


def test_a_manifest_that_is_no_regular_file_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "manifest.json")  # reading it would block until someone writes
    with pytest.raises(BundleError, match="not a regular file"):
        read_manifest(fifo)
    device = tmp_path / "device"
    device.mkdir()
    (device / "manifest.json").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(BundleError, match="not a regular file"):
        read_manifest(device)
    big = tmp_path / "big"
    big.mkdir()
    with (big / "manifest.json").open("wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(BundleError, match="at most"):
        read_manifest(big)
