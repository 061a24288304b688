"""bench/batch.py: larger batches with a scaled learning rate, on held-back training data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import batch
from bench._heldout import METRICS


def _row(fold: str, scale: int, seconds: float, metrics: tuple[float, float, float]) -> dict:
    row: dict[str, Any] = {"fold": fold, "component": "mf", "scale": scale, "seconds": seconds}
    row.update(dict(zip(METRICS, metrics, strict=True)))
    return {**row, "epoch_seconds": seconds / 10, "epochs_run": 10}


def test_learning_rate_rules() -> None:
    assert batch.lr_factor(4, "sqrt") == pytest.approx(2.0)
    assert batch.lr_factor(4, "linear") == pytest.approx(4.0)
    assert batch.lr_factor(1, "sqrt") == 1.0


def test_summary_pairs_each_scale_with_the_default_batch_of_its_fold() -> None:
    rows = [
        _row("u1", 1, 100.0, (0.95, 0.30, 0.20)),
        _row("u1", 2, 50.0, (0.96, 0.31, 0.20)),
        _row("u2", 1, 80.0, (0.94, 0.32, 0.22)),
        _row("u2", 2, 60.0, (0.93, 0.30, 0.21)),
    ]
    default, doubled = batch.summary(rows)
    assert default["scale"] == 1 and "time_ratio" not in default
    assert doubled["time_ratio"] == pytest.approx((0.5 + 0.75) / 2)
    assert doubled["rmse_delta"] == pytest.approx(0.0) and doubled["rmse_better_on"] == 1
    assert doubled["ndcg@10_delta"] == pytest.approx(-0.005)
    assert doubled["ndcg@10_better_on"] == 1
    assert doubled["recall@10_better_on"] == 0  # equal on u1, lower on u2


def test_trains_each_scale_and_scores_it_on_the_held_back_tenth(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "batch"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--components", "mf"]
    assert batch.main([*argv, "--scales", "1,4", "--quick", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    small, large = payload["rows"]
    assert (small["scale"], large["scale"]) == (1, 4)
    assert large["batch_size"] == 4 * small["batch_size"]
    assert large["lr_factor"] == pytest.approx(2.0)  # sqrt rule by default
    for row in (small, large):
        assert math.isfinite(row["rmse"]) and 0.0 <= row["ndcg@10"] <= 1.0
        assert row["epochs_run"] >= 1 and row["seconds"] > 0
    table = out.with_suffix(".md").read_text()
    assert table.count("| u1 | mf |") == 2 and "| mf | 4 |" in table


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--scales", "1,x", "whole numbers"), ("--scales", "0", "at least 1"),
     ("--components", "svd", "unknown components")],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(
    synthetic_ml100k: Path, flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        batch.main(["--data-dir", str(synthetic_ml100k), flag, value])
    assert message in capsys.readouterr().err
