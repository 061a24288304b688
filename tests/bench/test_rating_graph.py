"""bench/rating_graph.py on a trained --quick teacher: four graphs, one report section."""

from __future__ import annotations

import json
from pathlib import Path

from bench import rating_graph
from bench._report import _kept_block


def test_four_graphs_timed_and_one_section_kept(
    models_root: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    teacher = models_root / ".work" / manifest["training"]["run_key"] / "teacher.pt"
    docs, results = tmp_path / "BENCHMARKS.md", tmp_path / "rating-graph.json"
    docs.write_text("# Serving benchmarks\n\nbody\n", encoding="utf-8")
    argv = [
        "--checkpoint", str(teacher), "--warm-rounds", "4", "--cold-rounds", "2",
        "--results", str(results), "--docs", str(docs),
    ]  # fmt: skip
    for _ in range(2):  # a second run replaces the section
        assert rating_graph.main(argv) == 0

    rows = {row["graph"]: row for row in json.loads(results.read_text())["rows"]}
    assert list(rows) == [name for name, _, _ in rating_graph.VARIANTS]
    assert rows["both"]["nodes"] < rows["attention"]["nodes"] < rows["traced"]["nodes"]
    assert rows["both"]["nodes"] < rows["lookups"]["nodes"] < rows["traced"]["nodes"]
    for row in rows.values():
        assert row["max_abs_diff_vs_traced"] <= 1e-5
        assert 0 < row["warm_p50_us"] <= row["warm_p95_us"]
    text = docs.read_text()
    assert text.count(rating_graph.MARK_BEGIN) == 1 and text.startswith("# Serving benchmarks")
    assert "| both |" in text
    # The serving report rewrites the page around the section and keeps it.
    kept = "\n".join(_kept_block(docs))
    assert rating_graph.MARK_BEGIN in kept and "| traced |" in kept
