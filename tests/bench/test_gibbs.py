"""bench.gibbs: times the sampled rating head and reports the run's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gibbs
from tests.datagen import write_ml100k


def test_reports_the_median_time_per_sweep_and_the_same_figures_for_each_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_ml100k(tmp_path, n_users=40, n_items=30, n_ratings=600, seed=2)
    assert gibbs.main(["--data-dir", str(data), "--sweeps", "5", "--repeat", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["sweeps"] == 5 and len(row["seconds"]) == 2
    assert row["median_seconds"] == pytest.approx(sum(row["seconds"]) / 2, abs=1e-3)
    assert row["ms_per_sweep"] == pytest.approx(1000 * row["median_seconds"] / 5, rel=1e-2)
    assert 0 < row["train_rmse"] < 2 and row["noise_std"] > 0
    assert row["items"] == 30 and 0 < row["items_rated"] <= 30
    # One seed, one chain: a second run of the benchmark samples the same head.
    gibbs.main(["--data-dir", str(data), "--sweeps", "5", "--repeat", "1"])
    assert json.loads(capsys.readouterr().out)["train_rmse"] == row["train_rmse"]


def test_scores_held_out_ratings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_ml100k(tmp_path, n_users=40, n_items=30, n_ratings=600, seed=2)
    argv = ["--data-dir", str(data), "--sweeps", "45", "--repeat", "1", "--holdout", "0.2"]
    assert gibbs.main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["sweeps"] == 45 and row["holdout"] == 0.2
    assert 0 < row["train_rmse"] < row["holdout_rmse"] < 3
    with pytest.raises(SystemExit):
        gibbs.main([*argv[:-1], "1.5"])
