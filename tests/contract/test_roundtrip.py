"""A bundle written by training is read by the service through the one schema, and both
sides encode raw values the same way.

`bundle_dir` is the real bundle the training pipeline builds from generated ml-100k files
(tests/conftest.py); the service side is app/ as it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.bundle import load_bundle
from app.metrics import Metrics
from app.state import load_state
from contract.errors import BundleError
from contract.layout import sha256_file
from contract.ratings import DEFAULT_RATING_SCALE
from contract.verify import verify_bundle
from tests.helpers import copy_bundle, modules_loaded_by
from training import bundle as training_bundle
from training.data import load_dataset, make_split
from training.seen import SeenIndex

ROOT = Path(__file__).resolve().parents[2]


def test_training_bundle_round_trips_through_the_one_schema(
    bundle_dir: Path, synthetic_ml100k: Path
) -> None:
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    verified = verify_bundle(bundle_dir, open_models=True)
    # The schema keeps everything the writer put in, and training reads it back unchanged.
    assert verified.manifest.to_json() == raw
    assert training_bundle.verify_bundle(bundle_dir) == raw
    assert raw["dataset"]["rating_scale"] == list(DEFAULT_RATING_SCALE)

    served = load_bundle(bundle_dir)
    assert served.manifest == verified.manifest
    assert served.rating_scale == DEFAULT_RATING_SCALE
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    assert served.feature_map == ds.feature_map
    assert list(served.user_ids) == ds.user_ids and list(served.item_ids) == ds.item_ids
    np.testing.assert_array_equal(served.user_feats, ds.tables.user_feats)
    np.testing.assert_array_equal(served.item_feats, ds.tables.item_feats)
    np.testing.assert_array_equal(served.item_genres, ds.tables.item_genres)
    seen = SeenIndex.from_ratings(
        make_split(ds, split="u1").train,
        n_users=ds.feature_map.n_users,
        n_items=ds.feature_map.n_items,
    )
    np.testing.assert_array_equal(served.seen_indptr, seen.indptr)
    np.testing.assert_array_equal(served.seen_indices, seen.indices)


def _raw_users(root: Path) -> list[tuple[str, dict[str, str]]]:
    rows = []
    for line in (root / "u.user").read_text().splitlines():
        uid, age, gender, occupation, zip_code = line.split("|")
        rows.append(
            (uid, {"age": age, "gender": gender, "occupation": occupation, "zip": zip_code})
        )
    return rows


def test_service_encodes_raw_values_as_training_did(
    bundle_dir: Path, synthetic_ml100k: Path
) -> None:
    served = load_bundle(bundle_dir)
    fm = served.feature_map
    for uid, values in _raw_users(synthetic_ml100k):
        row = served.user_feats[served.user_index[uid]]
        np.testing.assert_array_equal(fm.encode_user(values), row)
        # A query parameter with stray whitespace or another case means the same value.
        sloppy = {k: f"  {v.lower() if k == 'gender' else v.upper()} " for k, v in values.items()}
        np.testing.assert_array_equal(fm.encode_user(sloppy), row)
        assert (row > 0).all()  # every generated value is known to the map


def _set_rating_scale(bundle: Path, scale: list[float] | None, *, feature_map: bool = True) -> None:
    """The scale in the manifest and, unless told not to, in the feature map (rehashed)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    if scale is None:
        manifest["dataset"].pop("rating_scale", None)
    else:
        manifest["dataset"]["rating_scale"] = scale
    if feature_map:
        entry = manifest["files"]["feature_map"]
        fm_path = bundle / entry["file"]
        fm = json.loads(fm_path.read_text())
        if scale is None:
            fm.pop("rating_scale", None)
        else:
            fm["rating_scale"] = scale
        fm_path.write_text(json.dumps(fm))
        entry["sha256"] = sha256_file(fm_path)
    path.write_text(json.dumps(manifest))


def test_the_service_clips_with_the_bundles_rating_scale(bundle_dir: Path, tmp_path: Path) -> None:
    older = copy_bundle(bundle_dir, tmp_path, version="older")
    _set_rating_scale(older, None)  # written before the scale was recorded
    assert load_bundle(older).rating_scale == (1.0, 5.0)

    half_stars = copy_bundle(bundle_dir, tmp_path, version="half-stars")
    _set_rating_scale(half_stars, [0.5, 5.0])
    state = load_state(
        half_stars, metrics=Metrics(CollectorRegistry()), providers=["CPUExecutionProvider"]
    )
    assert {r.rating_scale for r in state.runners.values()} == {(0.5, 5.0)}

    broken = copy_bundle(bundle_dir, tmp_path, version="broken")
    _set_rating_scale(broken, [5.0, 0.5])
    with pytest.raises(ValueError, match="low < high"):
        load_bundle(broken)

    # The manifest is not hashed: a scale edited there alone must not pass.
    edited = copy_bundle(bundle_dir, tmp_path, version="edited")
    _set_rating_scale(edited, [2.0, 4.0], feature_map=False)
    with pytest.raises(BundleError, match=r"rating_scale \[2\.0, 4\.0\] differs from"):
        verify_bundle(edited)


def test_the_contract_imports_neither_torch_nor_either_side() -> None:
    imports = "contract.verify, contract.features, contract.ratings"
    assert modules_loaded_by(imports, forbidden={"torch", "training", "app"}) == []
