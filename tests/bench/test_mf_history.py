"""bench/mf_history.py: every variant of every fold trained and scored on validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import mf_history


def test_writes_one_row_per_fold_and_variant_and_ease(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mf-history"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--jobs", "1"]
    assert mf_history.main([*argv, "--epochs", "2", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    models = [r["model"] for r in rows]
    assert models[0].startswith("EASE (lambda ")
    defaults = mf_history.DEFAULT_VARIANTS.split(",")
    assert models[1:] == [f"MF, {mf_history.VARIANTS[v][0]}" for v in defaults]
    for row in rows:
        assert row["fold"] == "u1"
        assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["recall@10"] <= 1.0
    for row in rows[1:]:
        assert row["rmse"] > 0 and 1 <= row["ranking_epoch"] <= 2
    table = out.with_suffix(".md").read_text()
    assert "--epochs 2" in table and table.count("| u1 |") == len(rows)


def test_runs_the_variants_asked_for_and_refuses_unknown_ones(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sampled"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--jobs", "1", "--epochs", "1"]
    assert mf_history.main([*argv, "--variants", "both-s32", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"] for r in rows[1:]] == ["MF, history in both heads, 32 per step"]
    assert "--variants both-s32" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="unknown variant"):
        mf_history.main([*argv, "--variants", "both,nope", "--out", str(out)])
