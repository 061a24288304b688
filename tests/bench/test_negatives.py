"""bench/negatives.py: the towers' softmax over sampled negatives or the whole catalogue,
on held-back training data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import negatives


def test_trains_each_count_and_pairs_it_with_the_first(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "negatives"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--components", "mf"]
    assert negatives.main([*argv, "--negatives", "16,0", "--quick", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    sampled, exact = payload["rows"]
    assert (sampled["negatives"], exact["negatives"]) == (16, 0)
    for row in (sampled, exact):
        assert math.isfinite(row["rmse"]) and 0.0 <= row["ndcg@10"] <= 1.0
        assert row["epochs_run"] >= 1 and row["seconds"] > 0
    base, variant = payload["summary"]
    assert "time_ratio" not in base
    assert variant["time_ratio"] == pytest.approx(exact["seconds"] / sampled["seconds"])
    assert variant["ndcg@10_delta"] == pytest.approx(exact["ndcg@10"] - sampled["ndcg@10"])
    table = out.with_suffix(".md").read_text()
    assert "| u1 | mf | catalogue |" in table and "| mf | catalogue |" in table
    assert "--negatives 16,0" in payload["command"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("256,x", "whole numbers"), ("-1", "each at least 0"), ("256,256", "each value once")],
)
def test_bad_counts_are_one_line_errors(
    synthetic_ml100k: Path, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        negatives.main(["--data-dir", str(synthetic_ml100k), "--negatives", value])
    assert message in capsys.readouterr().err
