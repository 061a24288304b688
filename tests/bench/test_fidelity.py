"""bench/fidelity.py: the student's and the SVD ceiling's share of the teacher's top 10."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import fidelity


def test_overlap_and_masked_top_by_hand() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    # User 0 rated item 0: hidden, so the top two are items 1 and 2.
    top = fidelity.masked_top(scores, np.array([0]), np.array([0]), 2)
    assert top.tolist() == [[1, 2], [3, 2]]
    reference = np.array([[1, 3], [2, 3]])
    np.testing.assert_allclose(fidelity.overlap(top, reference), [0.5, 1.0])
    binned = fidelity.by_activity(np.array([1.0, 0.0, 0.5]), np.array([10, 40, 45]))
    assert binned == [
        {"ratings": "0-29", "users": 1, "overlap": 1.0},
        {"ratings": "30-45", "users": 2, "overlap": 0.25},
    ]


def test_full_rank_svd_is_the_matrix_and_lower_ranks_are_worse() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 40)) + 0.1 * rng.normal(size=(30, 40))
    approx = fidelity.svd_ceiling(scores, [1, 30])
    np.testing.assert_allclose(approx[30], scores, atol=1e-9)
    assert np.linalg.norm(approx[1] - scores) > np.linalg.norm(approx[30] - scores)


def test_run_reports_ceiling_and_each_student(synthetic_ml100k: Path, tmp_path: Path) -> None:
    out = tmp_path / "fidelity"
    argv = ["--data-dir", str(synthetic_ml100k), "--ranks", "2,60", "--quick", "--out", str(out)]
    assert fidelity.main([*argv, "--variant", "w_topk_kd=0.5;topk_kd_items=5"]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    ceiling = {c["rank"]: c["overlap"] for c in payload["ceiling"]}
    assert ceiling[60] == pytest.approx(1.0)  # rank = users: the teacher's scores exactly
    assert 0.0 <= ceiling[2] < 1.0
    names = [s["variant"] for s in payload["students"]]
    assert names == ["defaults", "w_topk_kd=0.5;topk_kd_items=5"]
    for s in payload["students"]:
        assert 0.0 <= s["overlap"] <= 1.0 and sum(b["users"] for b in s["by_activity"]) == 60
    assert "| student (defaults) |" in out.with_suffix(".md").read_text()


def test_bad_ranks_and_fields_are_usage_errors(synthetic_ml100k: Path) -> None:
    argv = ["--data-dir", str(synthetic_ml100k)]
    for bad in (["--ranks", "0,4"], ["--ranks", "x"], ["--variant", "no_such_field=1"]):
        with pytest.raises(SystemExit) as err:
            fidelity.parse_args([*argv, *bad])
        assert err.value.code == 2
