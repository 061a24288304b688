"""The k-means settings comparison: each setting's index over a real bundle's vectors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app.bundle import load_bundle
from bench.ann_train import compare, parse_settings, render
from training.ann import KMeans


def test_settings_parse_and_bad_ones_are_named() -> None:
    assert parse_settings("256x10, 64x5") == [KMeans(256, 10), KMeans(64, 5)]
    for bad in ("64", "64x0", "x10", "64x1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="PER_LISTxNITER"):
            parse_settings(bad)


def test_each_setting_builds_a_tuned_index_and_is_reported(bundle_dir: Path) -> None:
    pytest.importorskip("faiss")
    bundle = load_bundle(bundle_dir)
    settings = [KMeans(256, 10), KMeans(8, 2)]
    rows = compare(bundle, "student", settings, seed=0, threads=1)
    assert [(r["per_list"], r["niter"]) for r in rows] == [(256, 10), (8, 2)]
    for row in rows:
        assert row["items"] == bundle.n_items and row["kind"] == "ivf_flat_sphere"
        # Export's rule: the tuned nprobe reaches 0.99, or every list is probed (exact).
        assert row["recall@10"] >= 0.99 or row["nprobe"] == row["nlist"]
        assert 0.0 <= row["held_out_recall@10"] <= 1.0 and row["search_p50_ms"] > 0
    text = render(rows, command="python -m bench.ann_train", bundle=bundle_dir)
    assert text.count("| student |") == 2 and "| 8 | 2 |" in text
