"""The model bundle `models/<version>/`: writing and the `current` switch.

Layout, manifest schema and verification are the contract (`contract/`, docs/contracts.md
section 2). A bundle is staged in a hidden folder next to its final place, fsynced,
verified by reading everything back, renamed into place and only then made `current` by
an atomic symlink replace, so a crash at any point leaves the previous `current` bundle
untouched and complete.
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

from contract.errors import BundleError
from contract.features import FEATURE_SCHEMA_VERSION
from contract.layout import (
    CURRENT,
    DATA_FILES,
    MANIFEST,
    MODEL_FILES,
    RATING_GRAPH_FILES,
    REQUIRED_MODELS,
    sha256_file,
)
from contract.manifest import MANIFEST_SCHEMA_VERSION, METRIC_KEYS
from contract.rating_factors import rating_factor_files
from contract.towers import tower_files
from contract.verify import verify_bundle as verify_contract
from training.data import Dataset, Ratings, popularity
from training.durable import fsync_dir, fsync_file
from training.seen import SeenIndex

__all__ = [
    "CURRENT",
    "DATA_FILES",
    "MANIFEST",
    "MANIFEST_SCHEMA_VERSION",
    "METRIC_KEYS",
    "MODEL_FILES",
    "RATING_GRAPH_FILES",
    "REQUIRED_MODELS",
    "BundleContents",
    "BundleError",
    "ModelArtifact",
    "RatingFactorFiles",
    "RatingGraphFile",
    "RetrievalFiles",
    "current_bundle",
    "make_version",
    "switch_current",
    "utc_now",
    "verify_bundle",
    "write_bundle",
]

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass
class ModelArtifact:
    """One exported model on its way into a bundle."""

    source: Path  # the verified ONNX file to copy in
    params: int
    metrics: dict[str, float]
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)  # parity, INT8 decision, ...
    # Served variants: their tower graph, item matrix and ANN index (training/towers.py).
    retrieval: RetrievalFiles | None = None
    rating_graph: RatingGraphFile | None = None
    rating_factors: RatingFactorFiles | None = None


@dataclass
class RatingFactorFiles:
    """A separable rating head's factor matrices (training/rating_factors.py), to copy in."""

    users: Path
    items: Path
    n_users: int
    n_items: int
    dim: int
    offset: float
    parity_max_abs_diff: float


@dataclass
class RatingGraphFile:
    """A model's rating graph (training/export.py `export_rating_graph`), to copy in."""

    path: Path
    parity_max_abs_diff: float


@dataclass
class RetrievalFiles:
    """The two-stage artefacts of one model, as export wrote them, to copy in."""

    user_tower: Path
    items: Path
    rows: int
    dim: int
    parity_max_abs_diff: float
    ann: Path | None = None
    ann_info: dict[str, Any] = field(default_factory=dict)  # kind, nlist, nprobe, recall@10


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
    seen = SeenIndex.from_ratings(contents.train, n_users=fm.n_users, n_items=fm.n_items)
    np.savez(
        stage / DATA_FILES["seen"],
        indptr=seen.indptr.astype(np.int64),
        indices=seen.indices.astype(np.int64),
    )
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
        if art.rating_graph is not None:
            shutil.copyfile(art.rating_graph.path, stage / RATING_GRAPH_FILES[key])
        if art.rating_factors is not None:
            names = rating_factor_files(key)
            shutil.copyfile(art.rating_factors.users, stage / names["users"])
            shutil.copyfile(art.rating_factors.items, stage / names["items"])
        if art.retrieval is not None:
            names = tower_files(key)
            shutil.copyfile(art.retrieval.user_tower, stage / names["user_tower"])
            shutil.copyfile(art.retrieval.items, stage / names["items"])
            if art.retrieval.ann is not None:
                shutil.copyfile(art.retrieval.ann, stage / names["ann"])


def _retrieval_entry(stage: Path, key: str, files: RetrievalFiles) -> dict[str, Any]:
    names = tower_files(key)

    def ref(name: str) -> dict[str, str]:
        return {"file": name, "sha256": sha256_file(stage / name)}

    entry: dict[str, Any] = {
        "user_tower": ref(names["user_tower"]),
        "items": {**ref(names["items"]), "rows": files.rows, "dim": files.dim, "dtype": "float32"},
        "parity_max_abs_diff": files.parity_max_abs_diff,
    }
    if files.ann is not None:
        entry["ann"] = {**ref(names["ann"]), **files.ann_info}
    return entry


def _rating_factors_entry(stage: Path, key: str, files: RatingFactorFiles) -> dict[str, Any]:
    names = rating_factor_files(key)

    def ref(name: str, rows: int) -> dict[str, Any]:
        sha = sha256_file(stage / name)
        return {"file": name, "sha256": sha, "rows": rows, "dim": files.dim, "dtype": "float32"}

    return {
        "users": ref(names["users"], files.n_users + 1),
        "items": ref(names["items"], files.n_items),
        "offset": files.offset,
        "parity_max_abs_diff": files.parity_max_abs_diff,
    }


def _complete_metrics(model: str, measured: dict[str, float]) -> dict[str, float]:
    """Protocol P's metrics when all of them are defined, else none (the manifest's rule):
    with no test rating of 4 or more the ranking ones are undefined, and rmse alone would
    read as a complete evaluation."""
    metrics = {
        name: float(measured[name])
        for name in METRIC_KEYS
        if name in measured and math.isfinite(float(measured[name]))
    }
    if metrics and len(metrics) < len(METRIC_KEYS):
        undefined = ", ".join(name for name in METRIC_KEYS if name not in metrics)
        log.warning(
            "%s: %s undefined on this test split; no metrics in the manifest", model, undefined
        )
        return {}
    return metrics


def _manifest(stage: Path, contents: BundleContents) -> dict[str, Any]:
    ds = contents.dataset
    files = {
        key: {"file": name, "sha256": sha256_file(stage / name)} for key, name in DATA_FILES.items()
    }
    models: dict[str, Any] = {}
    for key, art in contents.models.items():
        path = stage / MODEL_FILES[key]
        metrics = _complete_metrics(key, art.metrics)
        models[key] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "params": int(art.params),
            "onnx_bytes": path.stat().st_size,
            "metrics": metrics,
            "latency_ms": round(float(art.latency_ms), 4),
            **_finite(art.extra),
        }
        if art.retrieval is not None:
            models[key]["retrieval"] = _finite(_retrieval_entry(stage, key, art.retrieval))
        if art.rating_graph is not None:
            name = RATING_GRAPH_FILES[key]
            models[key]["rating_graph"] = {
                "file": name,
                "sha256": sha256_file(stage / name),
                "parity_max_abs_diff": _finite(art.rating_graph.parity_max_abs_diff),
            }
        if art.rating_factors is not None:
            models[key]["rating_factors"] = _finite(
                _rating_factors_entry(stage, key, art.rating_factors)
            )
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
            # What the models clip their rating head to (contract.ratings).
            "rating_scale": list(ds.feature_map.rating_scale),
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
            fsync_file(path)
        fsync_dir(stage)
        verify_bundle(stage)
        os.rename(stage, final)
        fsync_dir(out_dir)
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
    fsync_dir(out_dir)
    log.info("%s -> %s", out_dir / CURRENT, bundle.name)


def current_bundle(out_dir: Path) -> Path | None:
    link = Path(out_dir) / CURRENT
    if not link.exists():
        return None
    return link.resolve()


# ---------------------------------------------------------------- verification


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Checks a bundle completely, models included; returns its manifest as JSON.

    The checks are the contract's (`contract.verify`), the same the service runs.
    """
    return verify_contract(Path(bundle), open_models=True).manifest.to_json()
