"""The blend-budget bench: a teacher trained once, weights fitted per budget and sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import blend_users


def test_each_budget_and_sample_fits_and_scores_the_teacher(tmp_path: Path) -> None:
    argv = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    argv += ["--shape", "80,300,3000", "--budgets", "6,500", "--samples", "2"]
    argv += ["--test-users", "40", "--threads", "1"]
    assert blend_users.main(argv) == 0
    payload = json.loads((tmp_path / "out" / "items-300.json").read_text())
    rows = payload["rows"]
    assert [(r["budget"], r["sample"]) for r in rows] == [(6, 0), (6, 1), (500, 0), (500, 1)]
    ranked = {r["budget"]: r["users"] for r in rows}
    # A budget above the validation users who liked something ranks all of them.
    assert ranked[6] == 6 < ranked[500] < 80
    for row in rows:
        assert sum(row["weights"]) == pytest.approx(1.0)
        assert 0.0 <= row["ndcg@10"] <= 1.0 and row["test_users"] == 40
    # Every user ranked: both samples are the same users, so the same weights.
    assert rows[2]["weights"] == rows[3]["weights"]
    assert [t["samples"] for t in payload["summary"]] == [2, 2]
    text = (tmp_path / "out" / "items-300.md").read_text()
    assert text.count("\n| 6 | 2 |") == 1
    # The teacher is cached: a second run trains nothing and fits the same weights.
    assert len(list((tmp_path / "work").glob("teacher-*.pt"))) == 1
    assert blend_users.main([*argv, "--budgets", "500", "--samples", "1"]) == 0
    again = json.loads((tmp_path / "out" / "items-300.json").read_text())["rows"]
    assert again[0]["weights"] == rows[2]["weights"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--budgets", "0,5", "positive integers"), ("--shape", "1,2", "users,items,ratings")],
)
def test_bad_arguments_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit):
        blend_users.main(["--work", str(tmp_path), "--out", str(tmp_path), flag, value])
    assert message in capsys.readouterr().err
