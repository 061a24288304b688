"""The student benchmark's seed loop and its per-fold targets section."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench import student
from training.report import write_student_report


def _row(fold: str, seed: int, ndcg: float, rmse: float = 1.0) -> dict[str, Any]:
    return {
        "_fold": fold,
        "_seed": seed,
        "ndcg_ratio": ndcg,
        "rmse_ratio": rmse,
        "param_share": 0.09,
        "bytes_share": 0.095,
    }


def test_fold_targets_check_every_fold_on_the_mean_over_its_seeds() -> None:
    rows = [
        _row("u1", 0, 0.98),
        _row("u1", 1, 0.96),  # one seed below 0.97, the fold's mean 0.97 is not
        _row("u2", 0, 0.99),
        _row("u2", 1, 0.95),  # mean 0.97 too, but RMSE 1.02 on average
    ]
    rows[2]["rmse_ratio"] = rows[3]["rmse_ratio"] = 1.02
    out = student.fold_targets(rows)
    assert [e["fold"] for e in out] == ["u1", "u2"]
    u1, u2 = out
    assert u1["seeds"] == 2 and u1["met"] is True
    assert u1["ndcg_ratio"]["mean"] == pytest.approx(0.97)
    assert u1["ndcg_ratio"]["min"] == pytest.approx(0.96)
    assert u2["met"] is False and u2["rmse_ratio"]["met"] is False
    assert u2["ndcg_ratio"]["met"] is True and u2["param_share"]["met"] is True
    spread = student.summary_spread(rows)
    # Per-seed fold means of ndcg_ratio: seed 0 0.985, seed 1 0.955.
    assert spread["ndcg_ratio"]["mean"] == pytest.approx(0.97)
    assert spread["ndcg_ratio"]["min"] == pytest.approx(0.955)
    assert spread["ndcg_ratio"]["n"] == 2.0


def test_targets_section_shows_each_fold_and_fails_when_one_fold_does(tmp_path: Path) -> None:
    rows = [_row("u1", 0, 0.98), _row("u1", 1, 0.98), _row("u2", 0, 0.96), _row("u2", 1, 0.95)]
    results = {
        "summary": {"ndcg_ratio": 0.9675, "param_share": 0.09},
        "summary_spread": student.summary_spread(rows),
        "fold_targets": student.fold_targets(rows),
    }
    text = write_student_report(results, tmp_path).read_text()
    assert "#### On every fold separately" in text
    u1 = next(line for line in text.splitlines() if line.startswith("| u1 |"))
    u2 = next(line for line in text.splitlines() if line.startswith("| u2 |"))
    assert "0.9800 ± 0.0000" in u1 and u1.rstrip().endswith("| yes |")
    assert "0.9550 ± 0.0071 (worst seed 0.9500) >= 0.97: **no**" in u2
    assert u2.rstrip().endswith("| **no** |")
    assert "Every fold meets all of them: **no**" in text
    assert "mean ± std over seeds" in text  # the headline targets carry their spread


def test_student_benchmark_runs_every_fold_with_every_seed(
    synthetic_ml100k: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    calls: list[tuple[str, int]] = []

    def fake_run_fold(
        args: argparse.Namespace, dataset: Any, fold: str, results: dict[str, Any], tmp: Path
    ) -> None:
        calls.append((fold, args.seed))
        results["summary_rows"].append(_row(fold, args.seed, 0.97 + 0.01 * args.seed))

    monkeypatch.setattr(student, "run_fold", fake_run_fold)
    code = student.main([
        "--data-dir", str(synthetic_ml100k), "--folds", "u1,u2", "--seed", "1",
        "--seeds", "2", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    assert calls == [("u1", 1), ("u2", 1), ("u1", 2), ("u2", 2)]
    saved = json.loads((tmp_path / "student_results.json").read_text())
    assert saved["meta"]["seeds"] == [1, 2]
    assert [e["fold"] for e in saved["fold_targets"]] == ["u1", "u2"]
    assert saved["summary_spread"]["ndcg_ratio"]["mean"] == pytest.approx(0.985)
    assert saved["summary_spread"]["ndcg_ratio"]["std"] == pytest.approx(0.00707, abs=1e-5)


def test_waits_for_a_teacher_another_benchmark_is_still_writing(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    assert not student._await(path, 0.0)
    started = time.monotonic()
    assert not student._await(path, 0.3, poll=0.05)
    assert time.monotonic() - started >= 0.3
    writer = threading.Timer(0.2, path.write_bytes, args=(b"checkpoint",))
    writer.start()
    try:
        assert student._await(path, 30.0, poll=0.05)
    finally:
        writer.join()
    assert time.monotonic() - started < 10
