"""bench/paired.py: after - before per (fold, seed), with the t interval of the mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.paired import cells, compare, main


def _run(seed: int, values: dict[str, float]) -> dict[str, object]:
    # A ranking-only model: no RMSE (None) and no MAE (NaN) to compare.
    row = {"rmse": None, "mae": float("nan")}
    return {
        "folds": [
            {"fold": fold, "seed": seed, "rows": {"teacher": {**row, "ndcg@10": v}}}
            for fold, v in values.items()
        ]
    }


def test_differences_are_taken_cell_by_cell() -> None:
    before = cells([_run(0, {"u1": 0.40, "u2": 0.30}), _run(1, {"u1": 0.42})])
    after = cells([_run(0, {"u1": 0.41, "u2": 0.27}), _run(1, {"u1": 0.44, "u3": 0.9})])
    (result,) = compare(before, after, metrics=("ndcg@10", "rmse", "mae"))
    # Cells u1/0, u2/0, u1/1: differences +0.01, -0.03, +0.02 (u3 has no "before").
    assert result.n == 3 and result.lower_in == 1
    assert result.mean == pytest.approx(0.0)
    assert result.std == pytest.approx(0.02645751, abs=1e-7)  # sqrt(0.0014 / 2)
    half = 4.302653 * 0.02645751 / 3**0.5  # t(0.975, 2 degrees of freedom)
    assert (result.low, result.high) == (pytest.approx(-half), pytest.approx(half))


def test_a_cell_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="u1 seed 0 appears twice"):
        cells([_run(0, {"u1": 0.4}), _run(0, {"u1": 0.4})])


def test_the_cli_answers_bad_input_with_one_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_run(0, {"u1": 0.4})))
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match=r"not a bench\.quality or bench\.student result"):
        main(["--before", str(good), "--after", str(bad)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_run(1, {"u1": 0.4})))
    with pytest.raises(SystemExit, match="share no"):
        main(["--before", str(good), "--after", str(other)])
    out = tmp_path / "out.md"
    assert main(["--before", str(good), "--after", str(good), "--out-md", str(out)]) == 0
    assert "| teacher | ndcg@10 | 1 | +0.0000 |" in out.read_text()


def test_two_rows_of_the_same_runs_are_compared_cell_by_cell(tmp_path: Path) -> None:
    run = {
        "folds": [
            {"fold": f, "seed": 0, "rows": {"old": {"ndcg@10": a}, "new": {"ndcg@10": b}}}
            for f, a, b in (("u1", 0.40, 0.42), ("u2", 0.30, 0.29))
        ]
    }
    path, out = tmp_path / "run.json", tmp_path / "out.md"
    path.write_text(json.dumps(run))
    argv = ["--before", str(path), "--after", str(path), "--out-md", str(out)]
    assert main([*argv, "--row", "old=new"]) == 0
    assert "| new against old | ndcg@10 | 2 | +0.0050 |" in out.read_text()
    with pytest.raises(SystemExit, match="has no row 'gone'"):
        main([*argv, "--row", "gone=new"])
    with pytest.raises(SystemExit):
        main([*argv, "--row", "old"])


def test_student_runs_are_compared_on_their_ratios_to_the_teacher() -> None:
    def run(student_ndcg: float) -> dict[str, object]:
        rows = [
            {"model": "teacher", "fold": "u1", "seed": 0, "ndcg@10": 0.40, "rmse": 0.90},
            {"model": "student", "fold": "u1", "seed": 0, "ndcg@10": student_ndcg, "rmse": 0.909},
        ]
        return {"side_by_side": rows, "curve": []}

    before, after = cells([run(0.38)]), cells([run(0.39)])
    assert after[("u1", 0)]["student"]["rmse_ratio"] == pytest.approx(1.01)
    results = {(r.model, r.metric): r for r in compare(before, after)}
    assert results[("student", "ndcg_ratio")].mean == pytest.approx(0.025)  # 0.975 - 0.95
    assert results[("student", "rmse_ratio")].mean == pytest.approx(0.0)
    assert ("teacher", "ndcg_ratio") not in results  # the teacher has no ratio to itself
