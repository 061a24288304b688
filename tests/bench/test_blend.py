"""bench/blend.py: validation objectives for the teacher's ranking blend, scored on
held-back training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import blend


def _row(weights: list[float], valid: tuple[float, float], check: float) -> dict[str, Any]:
    return {
        "fold": "u1",
        "weights": weights,
        "valid": {"ndcg@10": valid[0], "recall@10": valid[1]},
        "check": {"ndcg@10": check, "recall@10": check},
    }


def test_each_objective_picks_from_validation_and_ties_go_to_the_default() -> None:
    rows = [
        _row([0.4, 0.4, 0.2], (0.30, 0.20), 0.31),  # the default weights
        _row([1.0, 0.0, 0.0], (0.32, 0.18), 0.29),
        _row([0.5, 0.3, 0.2], (0.32, 0.17), 0.28),  # ties on NDCG, nearer the default
        _row([0.0, 0.0, 1.0], (0.27, 0.25), 0.33),
    ]
    assert blend.choose(rows, "ndcg@10 (the teacher's)")["weights"] == [0.5, 0.3, 0.2]
    assert blend.choose(rows, "recall@10")["weights"] == [0.0, 0.0, 1.0]
    assert blend.choose(rows, "ndcg@10 + recall@10")["weights"] == [0.0, 0.0, 1.0]
    assert blend.choose(rows, "default")["weights"] == [0.4, 0.4, 0.2]
    assert blend.choose(rows, "best on check")["weights"] == [0.0, 0.0, 1.0]
    totals = {t["objective"]: t for t in blend.summary(rows, ["u1"])}
    assert totals["default"]["ndcg@10_delta"] == pytest.approx(0.31 - 0.28)
    assert totals["default"]["ndcg@10_better_on"] == 1
    assert totals["ndcg@10 (the teacher's)"]["ndcg@10_delta"] == 0.0


def test_scores_are_standardised_per_component_or_per_user_row() -> None:
    rng = np.random.default_rng(0)
    mats: list[np.ndarray] = [
        rng.normal(3.0, 2.0, (5, 7)).astype(np.float32),
        rng.normal(size=(5, 7)),
    ]
    mats[0][2] *= 10.0  # one user's scores on a wider scale
    liked = np.array([1, 2, 4])
    per_user = blend.standardised(mats, liked, "user")
    assert per_user.shape == (2, 5, 7)
    np.testing.assert_allclose(per_user.mean(axis=2), 0.0, atol=1e-9)
    np.testing.assert_allclose(per_user.std(axis=2), 1.0, rtol=1e-9)
    catalogue = blend.standardised(mats, liked, "catalogue")
    np.testing.assert_allclose(catalogue[0][liked].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(catalogue[0][liked].std(), 1.0, rtol=1e-6)
    # One scale per component: the wide user stays wide.
    assert catalogue[0][2].std() > 3 * catalogue[0][1].std()


def test_each_way_of_standardising_is_compared_with_the_first() -> None:
    rows = [
        {**_row([1.0, 0.0, 0.0], (0.30, 0.20), 0.30), "standardise": "catalogue"},
        {**_row([1.0, 0.0, 0.0], (0.30, 0.20), 0.34), "standardise": "user"},
    ]
    totals = blend.summary(rows, ["u1"], ["catalogue", "user"])
    by = {(t["standardise"], t["objective"]): t for t in totals}
    assert by[("catalogue", blend.BASELINE)]["ndcg@10_delta"] == 0.0
    assert by[("user", blend.BASELINE)]["ndcg@10_delta"] == pytest.approx(0.04)
    assert by[("user", blend.BASELINE)]["ndcg@10_better_on"] == 1


def test_scores_every_grid_point_on_validation_and_held_back_data(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "blend"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--jobs", "1"]
    argv += ["--standardise", "catalogue,user"]
    assert blend.main([*argv, "--step", "0.5", "--quick", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert len(payload["rows"]) == 2 * 6  # the simplex grid at step 0.5, per standardisation
    assert {r["standardise"] for r in payload["rows"]} == {"catalogue", "user"}
    for row in payload["rows"]:
        for split in ("valid", "check"):
            assert all(0.0 <= row[split][m] <= 1.0 for m in ("ndcg@10", "recall@10"))
    totals = {t["objective"]: t for t in payload["summary"]}
    best = totals["best on check"]["ndcg@10"]
    assert all(t["ndcg@10"] <= best for t in totals.values())
    assert "| user | default |" in out.with_suffix(".md").read_text()


def test_a_bad_step_is_a_one_line_error(
    synthetic_ml100k: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        blend.main(["--data-dir", str(synthetic_ml100k), "--step", "0"])
    assert "--step must lie in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        blend.main(["--data-dir", str(synthetic_ml100k), "--standardise", "item"])
    assert "--standardise: choose from catalogue, user" in capsys.readouterr().err


def _rated(fold: str, g: float, check: float, weights: str = "teacher's pick") -> dict[str, Any]:
    metrics = {"ndcg@10": check, "recall@10": check / 2}
    return {"fold": fold, "weights": weights, "g": g, "valid": metrics, "check": metrics}


def test_the_rating_term_is_compared_with_no_rating_term_cell_by_cell() -> None:
    rows = [
        _rated("u1/s0", 0.0, 0.30),
        _rated("u1/s0", 0.1, 0.32),
        _rated("u1/s1", 0.0, 0.20),
        _rated("u1/s1", 0.1, 0.19),
        _rated("u1/s0", 0.0, 0.50, "default"),
        _rated("u1/s0", 0.1, 0.40, "default"),
    ]
    totals = {(t["weights"], t["g"]): t for t in blend.rating_summary(rows)}
    picked = totals[("teacher's pick", 0.1)]
    assert picked["cells"] == 2
    assert picked["ndcg@10_delta"] == pytest.approx((0.02 - 0.01) / 2)
    assert picked["ndcg@10_better_on"] == 1
    assert picked["recall@10"] == pytest.approx((0.16 + 0.095) / 2)
    assert totals[("default", 0.1)]["ndcg@10_delta"] == pytest.approx(-0.10)
    assert totals[("teacher's pick", 0.0)]["ndcg@10_delta"] == 0.0
    assert blend.unit("u1", 1, [0, 1]) == "u1/s1"
    assert blend.unit("u1", 0, [0]) == "u1"


def test_ranks_with_mf_rating_added_over_seeds(synthetic_ml100k: Path, tmp_path: Path) -> None:
    out = tmp_path / "rated"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--jobs", "2", "--quick"]
    argv += ["--step", "0.5", "--seeds", "0,1", "--rating-scores", "0.2", "--out", str(out)]
    assert blend.main(argv) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert {r["fold"] for r in payload["rows"]} == {"u1/s0", "u1/s1"}
    # Two cells x two weightings x (g = 0, 0.2).
    assert len(payload["rating_rows"]) == 8
    for row in payload["rating_rows"]:
        assert all(0.0 <= row["check"][m] <= 1.0 for m in ("ndcg@10", "recall@10"))
    picks = {r["fold"]: r["blend"] for r in payload["rating_rows"] if r["weights"] != "default"}
    for label, pick in picks.items():
        grid = [r for r in payload["rows"] if r["fold"] == label]
        assert pick == blend.choose(grid, blend.BASELINE)["weights"]
    assert "## MF's rating in the ranking score" in out.with_suffix(".md").read_text()


def test_bad_rating_weights_are_a_one_line_error(
    synthetic_ml100k: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("0", "x"):
        with pytest.raises(SystemExit):
            blend.main(["--data-dir", str(synthetic_ml100k), "--rating-scores", bad])
        assert "--rating-scores" in capsys.readouterr().err
