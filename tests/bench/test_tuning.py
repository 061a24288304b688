"""bench/tuning.py: bench.student runs side by side, as ratios to the same fold's teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import tuning


def _side(fold: str, seed: int, teacher: float, student: float) -> list[dict[str, Any]]:
    common = {"fold": fold, "seed": seed, "recall@10": 0.2, "rmse": 0.9}
    return [
        {**common, "model": "popularity", "ndcg@10": 0.1},
        {**common, "model": "teacher", "ndcg@10": teacher},
        {**common, "model": "student", "ndcg@10": student, "param_share": 0.09},
    ]


def _run(tmp_path: Path, name: str, command: str, side: list[dict[str, Any]]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    payload = {"side_by_side": side, "meta": {"command": command}}
    (folder / "student_results.json").write_text(json.dumps(payload))
    return folder


def test_rows_pair_each_student_with_its_own_seeds_teacher(tmp_path: Path) -> None:
    side = _side("u1", 0, 0.40, 0.38) + _side("u1", 1, 0.50, 0.50) + _side("u2", 0, 0.3, 0.27)
    rows = tuning.run_rows({"side_by_side": side, "meta": {"command": "--holdout"}}, "e0")
    u1, u2 = rows
    assert (u1["fold"], u1["seeds"]) == ("u1", 2)
    assert u1["ndcg_ratio"] == pytest.approx((0.95 + 1.0) / 2)
    assert u1["rmse_ratio"] == pytest.approx(1.0)
    assert u2["ndcg_ratio"] == pytest.approx(0.9) and u2["settings"] == "defaults"


def test_table_names_each_runs_settings(tmp_path: Path) -> None:
    command = "--folds u1 --holdout --set epochs=13 --set w_ranking_kd=0.6 --ratio 0.91"
    runs = [
        _run(tmp_path, "e0", "--folds u1 --holdout", _side("u1", 0, 0.4, 0.36)),
        _run(tmp_path, "e1", command, _side("u1", 0, 0.4, 0.39)),
    ]
    out = tmp_path / "table.md"
    assert tuning.main([*map(str, runs), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    e0 = next(line for line in lines if line.startswith("| e0 |"))
    e1 = next(line for line in lines if line.startswith("| e1 |"))
    assert "| defaults |" in e0 and "| 0.9000 |" in e0
    assert "--set epochs=13, --set w_ranking_kd=0.6, --ratio 0.91" in e1 and "| 0.9750 |" in e1


def test_paired_compares_each_run_with_the_first_on_shared_cells(tmp_path: Path) -> None:
    base = _side("u1", 0, 0.4, 0.36) + _side("u1", 1, 0.4, 0.38) + _side("u2", 0, 0.5, 0.45)
    better = _side("u1", 0, 0.4, 0.38) + _side("u1", 1, 0.4, 0.37) + _side("u2", 0, 0.5, 0.5)
    better[-1]["rmse"] = 0.99  # the student's RMSE on u2 seed 0 gets worse
    runs = [_run(tmp_path, "old", "", base), _run(tmp_path, "new", "--set x=1", better)]
    out = tmp_path / "table.md"
    assert tuning.main([*map(str, runs), "--paired", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    u1_ndcg = next(line for line in lines if line.startswith("| new | u1 | ndcg_ratio | 2 |"))
    assert "| +0.0125 |" in u1_ndcg and u1_ndcg.endswith("| 1 of 2 |")  # (+0.05 - 0.025) / 2
    u1_rmse = next(line for line in lines if line.startswith("| new | u1 | rmse_ratio | 2 |"))
    assert "| +0.0000 |" in u1_rmse and u1_rmse.endswith("| 0 of 2 |")
    every = next(line for line in lines if line.startswith("| new | all | rmse_ratio | 3 |"))
    assert "| +0.0333 |" in every and every.endswith("| 0 of 3 |")  # RMSE 0.99/0.9 - 1
    every = next(line for line in lines if line.startswith("| new | all | ndcg_ratio | 3 |"))
    assert every.endswith("| 2 of 3 |")


@pytest.mark.parametrize("content", [None, "[1, 2]", "{not json"])
def test_a_folder_without_results_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    if content is not None:
        (tmp_path / "student_results.json").write_text(content)
    with pytest.raises(SystemExit):
        tuning.main([str(tmp_path)])
    assert "not a bench.student result" in capsys.readouterr().err
