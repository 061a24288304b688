"""Seeds and spread: the seed loop of the benchmarks and the spread of their figures."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import quality
from bench._spread import fmt_spread, per_seed_means, seed_list, spread, summarise


def test_seed_list_counts_up_from_the_first_seed() -> None:
    assert seed_list(0, 3) == [0, 1, 2]
    assert seed_list(7, 1) == [7]
    with pytest.raises(ValueError, match="at least 1"):
        seed_list(0, 0)


def test_spread_of_a_hand_computed_case() -> None:
    # mean 2, sample variance ((1-2)^2 + 0 + (3-2)^2) / 2 = 1.
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3.0}
    one = spread([0.5])
    assert one["std"] == 0.0 and one["n"] == 1.0
    # NaN (a peer without a rating head) is left out, never averaged in.
    assert spread([0.25, float("nan")])["mean"] == 0.25
    assert math.isnan(spread([float("nan")])["mean"])


def test_spread_is_over_seeds_of_the_fold_means() -> None:
    entries = [
        {"fold": "u1", "seed": 0, "rows": {"m": {"ndcg@10": 0.30, "rmse": float("nan")}}},
        {"fold": "u2", "seed": 0, "rows": {"m": {"ndcg@10": 0.50, "rmse": float("nan")}}},
        {"fold": "u1", "seed": 1, "rows": {"m": {"ndcg@10": 0.40, "rmse": float("nan")}}},
        {"fold": "u2", "seed": 1, "rows": {"m": {"ndcg@10": 0.60, "rmse": float("nan")}}},
    ]
    means = per_seed_means(entries, metrics=["ndcg@10"])
    assert means[0]["m"]["ndcg@10"] == pytest.approx(0.40)
    assert means[1]["m"]["ndcg@10"] == pytest.approx(0.50)
    s = summarise(entries, metrics=["ndcg@10", "rmse"])["m"]
    # Fold means 0.40 and 0.50: mean 0.45, sample std 0.0707 (not the std over all four).
    assert s["ndcg@10"]["mean"] == pytest.approx(0.45)
    assert s["ndcg@10"]["std"] == pytest.approx(math.sqrt(0.005))
    assert (s["ndcg@10"]["min"], s["ndcg@10"]["max"]) == pytest.approx((0.40, 0.50))
    assert s["rmse"]["n"] == 0.0
    assert fmt_spread(s["ndcg@10"]) == "0.4500 ± 0.0707"
    assert fmt_spread(s["rmse"]) == "-"
    assert fmt_spread(spread([0.5])) == "0.5000"


def test_quality_runs_every_fold_with_every_seed(tmp_path: Path, monkeypatch: Any) -> None:
    calls: list[tuple[str, int]] = []

    def fake_run_fold(task: tuple[str, int], args: argparse.Namespace) -> dict[str, Any]:
        fold, seed = task
        calls.append(task)
        ndcg = 0.4 + 0.01 * seed + (0.1 if fold == "u2" else 0.0)
        report = {
            "config": {},
            "ensemble": {
                "default": {"rmse": 0.9, "ndcg@10": 0.4},
                "fitted": {
                    "rmse": 0.9,
                    "ndcg@10": 0.4,
                    "rating_weights": [0.4, 0.4, 0.2],
                    "score_weights": [0.4, 0.4, 0.2],
                    "rating_bias": 0.0,
                },
            },
        }
        metrics = {m: 0.5 for m in quality.METRICS} | {"ndcg@10": ndcg}
        return {
            "fold": fold,
            "seed": seed,
            "rows": {"ease": dict(metrics)},
            "tuning": {"ease": {"chosen": {"lam": 300}, "trials": [{"ndcg@10": 0.2}]}},
            "teacher_report": report,
            "n_train": 10,
            "n_test": 2,
        }

    monkeypatch.setattr(quality, "run_fold", fake_run_fold)
    out_md, out_json = tmp_path / "Q.md", tmp_path / "q.json"
    code = quality.main([
        "--data-dir", str(tmp_path), "--folds", "u1,u2", "--seed", "4", "--seeds", "3",
        "--out-md", str(out_md), "--out-json", str(out_json),
    ])  # fmt: skip
    assert code == 0
    assert sorted(calls) == [(f, s) for f in ("u1", "u2") for s in (4, 5, 6)]
    result = json.loads(out_json.read_text())
    assert result["run"]["seeds"] == [4, 5, 6]
    ndcg = result["spread"]["ease"]["ndcg@10"]
    # Per-seed fold means 0.49, 0.50, 0.51: mean 0.50, std 0.01.
    assert ndcg["mean"] == pytest.approx(0.50) and ndcg["std"] == pytest.approx(0.01)
    assert result["mean"]["ease"]["ndcg@10"] == pytest.approx(0.50)
    text = out_md.read_text()
    assert "| ease | 0.5000 ± 0.0000 |" in text
    assert "0.5000 ± 0.0100" in text
    assert "lam 300" in text and "3 seed(s)" in text
    assert "--seeds 3" in text and str(tmp_path) not in text
