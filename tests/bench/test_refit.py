"""bench/refit.py: each component's first run against its refit, on held-back training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import refit


def _row(fold: str, first: tuple[float, float, float], again: tuple[float, float, float]) -> dict:
    return {
        "fold": fold,
        "component": "mf",
        "first": dict(zip(refit.METRICS, first, strict=True)),
        "refit": dict(zip(refit.METRICS, again, strict=True)),
        "refit_seconds": 10.0,
    }


def test_summary_counts_a_lower_rmse_and_a_higher_ndcg_as_better() -> None:
    rows = [
        _row("u1", (0.95, 0.30, 0.20), (0.93, 0.32, 0.19)),
        _row("u2", (0.94, 0.31, 0.21), (0.96, 0.30, 0.23)),
    ]
    out = refit.summary(rows)["mf"]
    assert out["folds"] == 2
    assert out["rmse"]["better_on"] == 1 and out["rmse"]["mean_delta"] == pytest.approx(0.0)
    assert out["ndcg@10"]["better_on"] == 1
    assert out["ndcg@10"]["mean_delta"] == pytest.approx(0.005)
    assert out["recall@10"]["better_on"] == 1
    assert out["recall@10"]["mean_delta"] == pytest.approx(0.005)


def test_scores_both_runs_of_a_component_on_the_held_back_tenth(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "refit"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--components", "mf"]
    assert refit.main([*argv, "--jobs", "1", "--quick", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    (row,) = payload["rows"]
    assert (row["fold"], row["component"]) == ("u1", "mf")
    for run in ("first", "refit"):
        assert row[run]["rmse"] > 0 and 0.0 <= row[run]["ndcg@10"] <= 1.0
        assert row[f"{run}_seconds"] > 0
    # MF's rating head is sampled (no epochs); its towers keep their best epoch.
    assert row["head_epochs"][0] == 0 and row["head_epochs"][1] >= 1
    assert set(payload["summary"]) == {"mf"}
    table = out.with_suffix(".md").read_text()
    assert "--quick" in table and table.count("| u1 | mf |") == 1


def test_an_unknown_component_is_a_one_line_error(
    synthetic_ml100k: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        refit.main(["--data-dir", str(synthetic_ml100k), "--components", "svd"])
    assert exit_info.value.code == 2  # a usage error, before any training
    assert "unknown components ['svd']" in capsys.readouterr().err
