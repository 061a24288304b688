"""The catalogue benchmark's report: its targets section, computed from the rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.catalogue import main, render, targets


def _variant(p50: float, *, method: str, recall: float, nbytes: int) -> dict[str, Any]:
    return {
        "method": method,
        "dim": 8,
        "p50_ms": p50,
        "p95_ms": p50,
        "p99_ms": p50,
        "first_stage_p50_ms": p50 / 2,
        "recall_at_10_vs_exact": recall,
        "retrieval_bytes": nbytes,
    }


def _row(items: int, teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    return {
        "items": items,
        "startup_s": 1.0,
        "rss_mb": 100.0,
        "bundle_bytes": 2**20,
        "requests": 50,
        "load_average_before": 0.2,
        "load_average": 0.4,
        "variants": {"teacher": teacher, "student": student},
    }


def test_targets_compare_the_largest_size_with_the_smallest() -> None:
    rows = [
        _row(
            10_000,
            _variant(2.0, method="exact", recall=1.0, nbytes=900),
            _variant(1.0, method="exact", recall=1.0, nbytes=200),
        ),
        _row(
            1_000_000,
            _variant(3.9, method="ann", recall=0.99, nbytes=9_000),
            _variant(2.5, method="ann", recall=0.97, nbytes=3_100),
        ),
    ]
    lines = targets(rows)
    teacher = next(line for line in lines if line.startswith("- teacher"))
    student = next(line for line in lines if line.startswith("- student p50"))
    # 3.9 ms: under 10 ms and 1.95x the 2.0 ms at 10,000 items.
    assert teacher.count("**NOT met**") == 0 and "1.95x" in teacher
    # 2.5 ms: under 5 ms, but 2.50x the 1.0 ms at 10,000 items.
    assert student.count("**NOT met**") == 1 and "2.50x" in student
    recall = next(line for line in lines if "recall" in line)
    assert "0.970 (student, 1,000,000 items)" in recall and "**NOT met**" in recall
    memory = next(line for line in lines if "memory" in line)
    assert "0.34" in memory and "**NOT met**" in memory  # 3,100 / 9,000 > 1/3


def test_render_names_the_load_and_the_request_count() -> None:
    row = _row(
        10_000,
        _variant(2.0, method="exact", recall=1.0, nbytes=900),
        _variant(1.0, method="exact", recall=1.0, nbytes=200),
    )
    text = render([row], command="python -m bench.catalogue --sizes 10000")
    assert "50 users per variant" in text
    assert "| 0.2 → 0.4 |" in text
    assert "recall" not in "\n".join(targets([row]))  # no ANN row, no recall target


def test_first_stage_only_times_each_bundle_in_turns_and_writes_nothing(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    argv = ["--first-stage", str(bundle_dir), str(bundle_dir), "--rounds", "2"]
    assert main([*argv, "--docs", str(docs)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["round"] for line in lines] == [1, 1, 2, 2]
    for line in lines:
        assert line["bundle"] == str(bundle_dir)
        for variant in ("teacher", "student"):
            stage = line[variant]
            assert stage["first_stage_p50_ms"] > 0 and stage["recall_at_10_vs_exact"] == 1.0
    assert not docs.exists()
