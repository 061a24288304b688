"""The sphere-lift comparison: both index kinds over a real bundle's vectors, one report."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bundle import load_bundle
from bench.ann_lift import compare, render


def test_both_index_kinds_are_built_tuned_and_reported(bundle_dir: Path) -> None:
    pytest.importorskip("faiss")
    bundle = load_bundle(bundle_dir)
    rows = compare(bundle, "student", seed=0)
    assert [r["kind"] for r in rows] == ["ivf_flat", "ivf_flat_sphere"]
    for row in rows:
        assert row["items"] == bundle.n_items
        assert 1 <= row["nprobe"] <= row["nlist"]
        # Export's rule: the tuned nprobe reaches 0.99, or every list is probed (exact).
        assert row["recall@10"] >= 0.99 or row["nprobe"] == row["nlist"]
        assert 0.0 <= row["held_out_recall@10"] <= 1.0 and row["search_p50_ms"] > 0
        curve = row["held_out_recall_by_nprobe"]
        assert curve[str(row["nprobe"])] == row["held_out_recall@10"]
        assert list(curve.values()) == sorted(curve.values())  # more lists, no fewer hits
    text = render(rows, command="python -m bench.ann_lift", bundle=bundle_dir)
    # One row per kind in the summary table and in the recall-by-nprobe table.
    assert text.count("| student |") == 4 and "ivf_flat_sphere" in text
