"""Smoke test of the quality benchmark on synthetic ml-100k files (behaviour, not numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quality
from bench._teacher_cache import load_teacher, teacher_cache_path


@pytest.mark.slow
def test_quality_benchmark_writes_its_table_and_json(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out_md, out_json = tmp_path / "QUALITY.md", tmp_path / "quality.json"
    code = quality.main([
        "--data-dir", str(synthetic_ml100k), "--folds", "u1,u2", "--quick",
        "--peers", "popularity", "--threads", "1",
        "--out-md", str(out_md), "--out-json", str(out_json),
        "--save-teachers", str(tmp_path / "teachers"),
    ])  # fmt: skip
    assert code == 0
    result = json.loads(out_json.read_text())
    assert [f["fold"] for f in result["folds"]] == ["u1", "u2"]
    rows = result["mean"]
    assert set(rows) == {"popularity", *quality.TEACHER_ROWS}
    for metrics in rows.values():
        assert 0.0 < metrics["ndcg@10"] <= 1.0
        assert metrics["rmse"] > 0.0
    text = out_md.read_text()
    assert "python -m bench.quality --data-dir $MOVIELENS_DIR" in text
    assert "| teacher (fitted weights) |" in text
    assert "## Targets" in text
    assert "Ensemble recall@10" in text
    assert str(tmp_path) not in text  # this machine's paths are not part of the recipe
    # The saved teachers are what bench.student --teacher-cache loads for the same folds.
    for fold in ("u1", "u2"):
        path = teacher_cache_path(tmp_path / "teachers", fold, quick=True, seed=0)
        teacher = load_teacher(path)
        assert hasattr(teacher, "components") and len(teacher.components) == 3
