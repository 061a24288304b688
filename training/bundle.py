"""The model bundle `models/<version>/`: writing, verification and the `current` switch.

Layout and manifest are docs/contracts.md section 2. A bundle is staged in a hidden
folder next to its final place, fsynced, verified by reading everything back, renamed
into place and only then made `current` by an atomic symlink replace, so a crash at
any point leaves the previous `current` bundle untouched and complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training.data import Dataset, Ratings, popularity, seen_csr, sha256_file
from training.features import FEATURE_SCHEMA_VERSION, INPUT_NAMES, OUTPUT_NAMES, FeatureMap

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "current"
MODEL_FILES = {
    "teacher": "teacher.onnx",
    "student": "student.onnx",
    "student_int8": "student.int8.onnx",
}
REQUIRED_MODELS = ("teacher", "student")
DATA_FILES = {
    "feature_map": "feature_map.json",
    "id_maps": "id_maps.json",
    "features": "features.npz",
    "seen": "seen.npz",
    "items": "items.json",
    "popular": "popular.json",
    "report": "report.md",
    "metrics": "metrics.json",
}
METRIC_KEYS = ("rmse", "mae", "recall@10", "ndcg@10", "hr@10", "coverage@10")
_STAGING_PREFIX = ".staging-"
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class BundleError(ValueError):
    """A bundle is missing a file, was tampered with or has an unknown schema."""


@dataclass
class ModelArtifact:
    """One exported model on its way into a bundle."""

    source: Path  # the verified ONNX file to copy in
    params: int
    metrics: dict[str, float]
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)  # parity, INT8 decision, ...


@dataclass
class BundleContents:
    version: str
    dataset: Dataset
    split: str
    train: Ratings  # what the models saw: drives seen.npz and popular.json
    models: dict[str, ModelArtifact]
    training: dict[str, Any]
    report_md: str
    metrics: dict[str, Any]
    created_at: str = ""


def make_version(dataset: str, split: str, *, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{dataset}-{split}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- writing


def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity (the service parses with orjson, which rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )


def _stage_data(stage: Path, contents: BundleContents) -> None:
    ds = contents.dataset
    fm = ds.feature_map
    _write_json(stage / DATA_FILES["feature_map"], fm.to_json())
    _write_json(stage / DATA_FILES["id_maps"], {"users": ds.user_ids, "items": ds.item_ids})
    ds.tables.save(stage / DATA_FILES["features"])
    indptr, indices = seen_csr(contents.train, fm.n_users)
    np.savez(stage / DATA_FILES["seen"], indptr=indptr.astype(np.int64), indices=indices)
    _write_json(stage / DATA_FILES["items"], ds.items_meta)
    ranking = popularity(contents.train, fm.n_items)
    _write_json(stage / DATA_FILES["popular"], [ds.item_ids[i - 1] for i in ranking])
    (stage / DATA_FILES["report"]).write_text(contents.report_md, encoding="utf-8")
    _write_json(stage / DATA_FILES["metrics"], contents.metrics)


def _stage_models(stage: Path, contents: BundleContents) -> None:
    for key in contents.models:
        if key not in MODEL_FILES:
            raise BundleError(f"unknown model key {key!r}; expected one of {list(MODEL_FILES)}")
    for key in REQUIRED_MODELS:
        if key not in contents.models:
            raise BundleError(f"a bundle needs a {key} model")
    for key, art in contents.models.items():
        shutil.copyfile(art.source, stage / MODEL_FILES[key])


def _manifest(stage: Path, contents: BundleContents) -> dict[str, Any]:
    ds = contents.dataset
    files = {
        key: {"file": name, "sha256": sha256_file(stage / name)} for key, name in DATA_FILES.items()
    }
    models: dict[str, Any] = {}
    for key, art in contents.models.items():
        path = stage / MODEL_FILES[key]
        metrics = {
            name: float(art.metrics[name])
            for name in METRIC_KEYS
            if name in art.metrics and math.isfinite(float(art.metrics[name]))
        }
        models[key] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "params": int(art.params),
            "onnx_bytes": path.stat().st_size,
            "metrics": metrics,
            "latency_ms": round(float(art.latency_ms), 4),
            **_finite(art.extra),
        }
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "version": contents.version,
        "created_at": contents.created_at or utc_now(),
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "dataset": {
            "name": ds.name,
            "split": contents.split,
            "fingerprint": ds.fingerprint,
            "n_users": ds.feature_map.n_users,
            "n_items": ds.feature_map.n_items,
            "n_ratings": len(ds.ratings),
            "n_train": len(contents.train),
        },
        "training": contents.training,
        "files": files,
        "models": models,
    }


def write_bundle(out_dir: Path, contents: BundleContents, *, make_current: bool = True) -> Path:
    """Writes, verifies and publishes `out_dir/<version>/`; returns its path.

    Nothing under `out_dir` that a reader could see changes until the bundle is complete:
    the staging folder is hidden, and `current` moves last.
    """
    if not _SAFE_VERSION.match(contents.version):
        raise BundleError(f"bundle version {contents.version!r} is not a safe folder name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / contents.version
    if final.exists():
        raise BundleError(f"{final} already exists; bundle versions are never overwritten")
    stage = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{contents.version}-", dir=out_dir))
    try:
        # mkdtemp makes the folder private; the service may run as another user.
        stage.chmod(0o755)
        _stage_data(stage, contents)
        _stage_models(stage, contents)
        _write_json(stage / MANIFEST, _manifest(stage, contents))
        for path in stage.iterdir():
            _fsync_file(path)
        _fsync_dir(stage)
        verify_bundle(stage)
        os.rename(stage, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("bundle %s written", final)
    if make_current:
        switch_current(out_dir, final)
    return final


def switch_current(out_dir: Path, bundle: Path) -> None:
    """Points `out_dir/current` at `bundle` with one atomic rename of a fresh symlink."""
    out_dir = Path(out_dir)
    bundle = Path(bundle)
    if bundle.parent.resolve() != out_dir.resolve():
        raise BundleError(f"{bundle} is not inside {out_dir}")
    verify_bundle(bundle)
    link = out_dir / CURRENT
    if link.exists() and not link.is_symlink():
        raise BundleError(f"{link} is a real folder, not a link; move it away to publish")
    tmp_link = out_dir / f".{CURRENT}.{os.getpid()}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    # Relative target: the models folder stays valid when mounted or moved elsewhere.
    os.symlink(bundle.name, tmp_link)
    os.replace(tmp_link, link)
    _fsync_dir(out_dir)
    log.info("%s -> %s", out_dir / CURRENT, bundle.name)


def current_bundle(out_dir: Path) -> Path | None:
    link = Path(out_dir) / CURRENT
    if not link.exists():
        return None
    return link.resolve()


# ---------------------------------------------------------------- verification


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: manifest missing (not a bundle, or an unfinished one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object")
    schema = manifest.get("schema_version")
    if schema != MANIFEST_SCHEMA_VERSION:
        raise BundleError(
            f"{path}: unknown schema_version {schema!r} "
            f"(this build reads {MANIFEST_SCHEMA_VERSION})"
        )
    feature_schema = manifest.get("feature_schema_version")
    if feature_schema != FEATURE_SCHEMA_VERSION:
        raise BundleError(
            f"{path}: unknown feature_schema_version {feature_schema!r} "
            f"(this build reads {FEATURE_SCHEMA_VERSION})"
        )
    for key in ("version", "created_at", "dataset", "training", "files", "models"):
        if key not in manifest:
            raise BundleError(f"{path}: missing key {key!r}")
    return manifest


def _check_file(bundle: Path, what: str, entry: Any) -> Path:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise BundleError(f"{bundle / MANIFEST}: entry {what!r} lacks a 'file' name")
    name = entry["file"]
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BundleError(f"{bundle / MANIFEST}: entry {what!r} names {name!r}, not a plain file")
    path = bundle / name
    if not path.is_file():
        raise BundleError(f"{path}: missing ({what})")
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise BundleError(
            f"{path}: sha256 {actual} does not match the manifest's {entry.get('sha256')!r} "
            "(file changed after export)"
        )
    return path


def _check_onnx(path: Path, what: str, entry: dict[str, Any], version: str) -> None:
    if entry.get("onnx_bytes") != path.stat().st_size:
        raise BundleError(f"{path}: size {path.stat().st_size} != onnx_bytes in the manifest")
    missing = [m for m in METRIC_KEYS if m not in entry.get("metrics", {})]
    if entry.get("metrics") and missing:
        raise BundleError(f"{path}: manifest metrics of {what} lack {', '.join(missing)}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types per failure
        raise BundleError(f"{path}: onnxruntime cannot load {what}: {err}") from None
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
        raise BundleError(
            f"{path}: signature {inputs} -> {outputs}, expected {INPUT_NAMES} -> {OUTPUT_NAMES}"
        )
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("bundle_version") != version:
        raise BundleError(
            f"{path}: built for bundle {meta.get('bundle_version')!r}, manifest says {version!r}"
        )
    if meta.get("feature_schema_version") != str(FEATURE_SCHEMA_VERSION):
        raise BundleError(f"{path}: feature_schema_version {meta.get('feature_schema_version')!r}")


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Checks a bundle completely; returns its manifest or raises BundleError saying why."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a directory")
    manifest = read_manifest(bundle)
    files = manifest["files"]
    models = manifest["models"]
    if not isinstance(files, dict) or not isinstance(models, dict):
        raise BundleError(f"{bundle / MANIFEST}: 'files' and 'models' must be objects")
    for key in DATA_FILES:
        if key in ("report", "metrics"):
            continue
        if key not in files:
            raise BundleError(f"{bundle / MANIFEST}: 'files' lacks {key!r}")
    paths = {key: _check_file(bundle, key, entry) for key, entry in files.items()}
    for key in REQUIRED_MODELS:
        if key not in models:
            raise BundleError(f"{bundle / MANIFEST}: 'models' lacks {key!r}")
    for key, entry in models.items():
        if key not in MODEL_FILES:
            raise BundleError(f"{bundle / MANIFEST}: unknown model key {key!r}")
        path = _check_file(bundle, key, entry)
        _check_onnx(path, key, entry, str(manifest["version"]))
    _check_tables(bundle, paths)
    return manifest


def _check_tables(bundle: Path, paths: dict[str, Path]) -> None:
    """The data files agree with each other (sizes), so the service can index them blindly."""
    try:
        fm = FeatureMap.load(paths["feature_map"])
        ids = json.loads(paths["id_maps"].read_text(encoding="utf-8"))
        items = json.loads(paths["items"].read_text(encoding="utf-8"))
        with np.load(paths["features"]) as feats:
            shapes = {k: feats[k].shape for k in ("user_feats", "item_feats", "item_genres")}
        with np.load(paths["seen"]) as seen:
            indptr = seen["indptr"]
            n_seen = seen["indices"].shape[0]
    except (ValueError, KeyError, OSError) as err:
        raise BundleError(f"{bundle}: unreadable data file: {err}") from None
    expect = {
        "users in id_maps": (len(ids.get("users", [])), fm.n_users),
        "items in id_maps": (len(ids.get("items", [])), fm.n_items),
        "rows of items.json": (len(items), fm.n_items),
        "user_feats": (shapes["user_feats"], (fm.user_vocab, len(fm.user_fields))),
        "item_feats": (shapes["item_feats"], (fm.item_vocab, len(fm.item_fields))),
        "item_genres": (shapes["item_genres"], (fm.item_vocab, fm.n_genres)),
        "seen indptr": (indptr.shape[0], fm.n_users + 2),
        "seen indices": (n_seen, int(indptr[-1]) if indptr.size else 0),
    }
    for what, (have, want) in expect.items():
        if have != want:
            raise BundleError(f"{bundle}: {what} is {have}, the feature map implies {want}")
