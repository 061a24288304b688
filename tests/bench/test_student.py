"""The student benchmark's seed loop and its per-fold targets section."""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import student
from training.models.student import StudentShape
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


def _ablation(name: str, fold: str, seed: int, ndcg: float, rmse: float) -> dict[str, Any]:
    return {"name": name, "fold": fold, "seed": seed, "ndcg@10": ndcg, "recall@10": ndcg / 2,
            "rmse": rmse}  # fmt: skip


def test_pruning_comparison_pairs_each_fold_and_seed(tmp_path: Path) -> None:
    fisher, magnitude = "PAKD, fisher pruning (default)", "PAKD, magnitude pruning"
    rows = [
        _ablation(fisher, "u1", 0, 0.40, 0.90),
        _ablation(magnitude, "u1", 0, 0.38, 0.91),
        _ablation(fisher, "u1", 1, 0.41, 0.92),
        _ablation(magnitude, "u1", 1, 0.42, 0.91),
        _ablation(fisher, "u2", 0, 0.30, 0.95),
        _ablation(magnitude, "u2", 0, 0.20, 0.99),
        _ablation("same size, no KD (ground truth only, scratch)", "u2", 0, 0.1, 1.2),
    ]
    out = student.pruning_comparison(rows)
    # Only pruning methods are compared; u1, u2 and all folds, three metrics each.
    assert {r["against"] for r in out} == {magnitude}
    by = {(r["fold"], r["metric"]): r for r in out}
    assert set(by) == {(f, m) for f in ("u1", "u2", "all") for m in student.PRUNING_METRICS}
    u1 = by[("u1", "ndcg@10")]
    assert u1["cells"] == 2 and u1["mean"] == pytest.approx(0.005)
    assert u1["better_in"] == 1
    assert u1["low"] < 0 < u1["high"]  # +0.02 and -0.01: no measured difference
    assert by[("all", "rmse")]["better_in"] == 2  # lower RMSE in u1 seed 0 and u2
    assert by[("all", "ndcg@10")]["mean"] == pytest.approx((0.02 - 0.01 + 0.10) / 3)
    assert by[("u2", "ndcg@10")]["cells"] == 1  # one cell: an unbounded interval
    text = write_student_report({"pruning": out}, tmp_path).read_text()
    line = next(x for x in text.splitlines() if x.startswith(f"| {magnitude} | all | rmse |"))
    assert "| 3 | -0.0133 |" in line and line.endswith("| 2 of 3 |")


def test_student_benchmark_runs_every_fold_with_every_seed(
    synthetic_ml100k: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    calls: list[tuple[str, int, bool]] = []

    def fake_train_fold(
        args: argparse.Namespace, dataset: Any, fold: str, *, fisher: bool, n_jobs: int
    ) -> Any:
        calls.append((fold, args.seed, fisher))
        return argparse.Namespace(fold=fold, seed=args.seed)

    def fake_record_fold(
        args: argparse.Namespace, dataset: Any, run: Any, results: dict[str, Any], tmp: Path
    ) -> None:
        results["summary_rows"].append(_row(run.fold, run.seed, 0.97 + 0.01 * run.seed))

    monkeypatch.setattr(student, "train_fold", fake_train_fold)
    monkeypatch.setattr(student, "record_fold", fake_record_fold)
    code = student.main([
        "--data-dir", str(synthetic_ml100k), "--folds", "u1,u2", "--seed", "1",
        "--seeds", "2", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    # The Fisher analysis runs once, on the first fold of the first seed.
    assert calls == [("u1", 1, True), ("u2", 1, False), ("u1", 2, False), ("u2", 2, False)]
    saved = json.loads((tmp_path / "student_results.json").read_text())
    assert saved["meta"]["seeds"] == [1, 2]
    assert [e["fold"] for e in saved["fold_targets"]] == ["u1", "u2"]
    assert saved["summary_spread"]["ndcg_ratio"]["mean"] == pytest.approx(0.985)
    assert saved["summary_spread"]["ndcg_ratio"]["std"] == pytest.approx(0.00707, abs=1e-5)


@pytest.mark.slow
def test_folds_in_parallel_processes_give_the_rows_of_one_process(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    common = [
        "--data-dir", str(synthetic_ml100k), "--folds", "u1,u2", "--seeds", "1", "--quick",
        "--ratios", "0.5", "--ratio", "0.5", "--ablations", "none", "--latency-runs", "2",
        "--teacher-cache", str(tmp_path / "teachers"),
    ]  # fmt: skip
    saved = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert student.main([*common, "--jobs", jobs, "--out", str(out)]) == 0
        saved[jobs] = json.loads((out / "student_results.json").read_text())
    metrics = ("fold", "seed", "rmse", "ndcg@10", "recall@10", "param_share", "params")
    one, two = ([{k: r[k] for k in metrics} for r in saved[j]["curve"]] for j in ("1", "2"))
    assert [r["fold"] for r in one] == ["u1", "u2"]
    assert one == two  # the same teachers (cached), the same seeded distillation
    assert saved["2"]["fisher"] == saved["1"]["fisher"]
    assert [e["fold"] for e in saved["2"]["fold_targets"]] == ["u1", "u2"]


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


def test_set_parses_each_value_as_its_field_type() -> None:
    out = student.config_overrides(["finetune_epochs=6", "w_ranking_kd=0.5", "prune=false"])
    assert out == {"finetune_epochs": 6, "w_ranking_kd": 0.5, "prune": False}


def test_set_changes_the_shape_width_by_width() -> None:
    pairs = ["initial=shape", "shape.user_hidden=64", "shape.score_factor=8"]
    out = student.config_overrides(pairs)
    assert out == {
        "initial": "shape",
        "shape": replace(StudentShape(), user_hidden=64, score_factor=8),
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [("epochz=3", "StudentConfig field"), ("finetune_epochs", "FIELD=VALUE"),
     ("finetune_epochs=many", "is not a valid int"), ("prune=maybe", "true or false"),
     ("shape=1", "shape.FIELD=VALUE"), ("shape.width=3", "StudentConfig field"),
     ("shape.user_hidden=0", "must be positive"), ("shape.user_hidden=x", "not a valid int")],
)  # fmt: skip
def test_a_bad_set_is_a_one_line_error(
    pair: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        student.parse_args(["--set", pair])
    assert message in capsys.readouterr().err


def test_holdout_tunes_on_held_back_training_ratings_never_the_test_fold(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    code = student.main([
        "--data-dir", str(synthetic_ml100k), "--folds", "u1", "--seeds", "1", "--quick",
        "--holdout", "--set", "finetune_epochs=2", "--ratios", "0.5", "--ratio", "0.5",
        "--ablations", "pruning", "--latency-runs", "2", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    saved = json.loads((tmp_path / "student_results.json").read_text())
    assert {r["fold"] for r in saved["curve"] + saved["ablations"]} == {"u1-holdout"}
    assert saved["student"]["info"]["config"]["finetune_epochs"] == 2
    # Fisher against magnitude and random pruning, paired on the one (fold, seed) cell.
    assert {r["against"] for r in saved["pruning"]} == {
        "PAKD, magnitude pruning",
        "PAKD, random pruning",
    }
    assert all(r["cells"] == 1 for r in saved["pruning"])
    dataset = student.load_dataset(synthetic_ml100k, dataset="ml-100k")
    split = student.fold_split(dataset, "u1", held_back=True)
    fold = student.make_split(dataset, split="u1")
    assert len(split.train) + len(split.test) == len(fold.train)
    assert len(split.test) == round(0.1 * len(fold.train))
