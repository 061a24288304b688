"""Smoke test of the quality benchmark on synthetic ml-100k files (behaviour, not numbers)."""

from __future__ import annotations

import json
import math
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
        "--peers", "popularity,ease", "--threads", "1", "--seeds", "2",
        "--out-md", str(out_md), "--out-json", str(out_json),
        "--save-teachers", str(tmp_path / "teachers"),
    ])  # fmt: skip
    assert code == 0
    result = json.loads(out_json.read_text())
    assert [(f["fold"], f["seed"]) for f in result["folds"]] == [
        ("u1", 0), ("u2", 0), ("u1", 1), ("u2", 1)
    ]  # fmt: skip
    assert result["spread"]["teacher (fitted weights)"]["ndcg@10"]["n"] == 2
    rows = result["mean"]
    assert set(rows) == {"popularity", "ease", *quality.TEACHER_ROWS}
    for name, metrics in rows.items():
        assert 0.0 < metrics["ndcg@10"] <= 1.0
        assert metrics["rmse"] > 0.0 if name != "ease" else math.isnan(metrics["rmse"])
    assert result["folds"][0]["tuning"]["ease"]["chosen"]["lam"] in (50, 100)
    text = out_md.read_text()
    assert "python -m bench.quality --data-dir $MOVIELENS_DIR" in text
    assert "| teacher (fitted weights) |" in text
    assert "## Targets" in text
    assert "Ensemble recall@10" in text
    assert "x EASE (tuned)" in text and "## Peers tuned on validation" in text
    assert str(tmp_path) not in text  # this machine's paths are not part of the recipe
    g = result["folds"][0]["teacher_report"]["ensemble"]["teacher"]["rating_score_weight"]
    assert f" + {g:g} |" in text  # the weight of MF's rating beside the score weights
    # The same teacher without the rating term is a row of its own, from the same models.
    assert rows["teacher (fitted weights, no rating term)"]["rmse"] == pytest.approx(
        rows["teacher (fitted weights)"]["rmse"]
    )
    # The saved teachers are what bench.student --teacher-cache loads for the same folds.
    for fold, seed in (("u1", 0), ("u2", 0), ("u1", 1)):
        path = teacher_cache_path(tmp_path / "teachers", fold, quick=True, seed=seed)
        teacher = load_teacher(path)
        assert hasattr(teacher, "components") and len(teacher.components) == 3


def test_peers_only_run_tunes_the_peers_without_a_teacher(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out_md, out_json = tmp_path / "PEERS.md", tmp_path / "peers.json"
    code = quality.main([
        "--data-dir", str(synthetic_ml100k), "--folds", "u1", "--seeds", "2", "--quick",
        "--peers", "popularity,ease", "--peers-only", "--threads", "1",
        "--out-md", str(out_md), "--out-json", str(out_json),
    ])  # fmt: skip
    assert code == 0
    result = json.loads(out_json.read_text())
    assert set(result["mean"]) == {"popularity", "ease"}
    assert [f["seed"] for f in result["folds"]] == [0, 1]
    # Each seed draws its own validation split: the trials differ, the grid does not.
    trials = [f["tuning"]["ease"]["trials"] for f in result["folds"]]
    assert [t["lam"] for t in trials[0]] == [t["lam"] for t in trials[1]] == [50, 100]
    assert trials[0] != trials[1]
    text = out_md.read_text()
    assert "| ease |" in text and "| teacher" not in text and "- Ensemble" not in text
