"""Smoke test of the serving benchmark harness on the small test bundle.

Behaviour only (every scenario measured, nothing failed, caching as intended, report and
plots written); the timings of such a tiny run mean nothing and are not checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import serving

SCENARIOS = {
    ("loadgen_ceiling", "client"), ("floor", "framework"),
    ("recommend_uncached", "teacher"), ("recommend_uncached", "student"),
    ("recommend_uncached", "student_int8"),
    ("recommend_cached", "teacher"), ("recommend_cached", "student"),
    ("recommend_cached", "student_int8"),
    ("predict_single", "teacher"), ("predict_single", "student"),
    ("predict_single", "student_int8"),
    ("predict_batch", "teacher"), ("predict_batch", "student"),
    ("predict_batch", "student_int8"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_benchmark_runs_every_scenario_and_writes_the_report(
    bundle_dir: Path, tmp_path: Path
) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["models"].get("student_int8"), "the test bundle should carry an INT8 model"
    results, docs = tmp_path / "results", tmp_path / "docs" / "BENCHMARKS.md"

    code = serving.main([
        "--model-dir", str(bundle_dir), "--concurrency", "1,3", "--max-requests", "12",
        "--max-seconds", "2", "--warmup-requests", "2", "--batch-pairs", "7",
        "--cached-users", "5", "--paired-rounds", "2", "--paired-seconds", "0.5",
        "--results-dir", str(results), "--docs", str(docs),
    ])  # fmt: skip

    assert code == 0
    [path] = results.glob("serving-*.json")
    run = json.loads(path.read_text())
    paired = [p for p in run["points"] if p["scenario"].startswith("paired_")]
    points = [p for p in run["points"] if not p["scenario"].startswith("paired_")]
    assert {(p["scenario"], p["model"]) for p in points} == SCENARIOS
    # Per server (but the closed-loop one) and round: its floor, then each model it serves,
    # uncached or cached.
    rounds = {(p["server"], p["round"], p["scenario"], p["model"]) for p in paired}
    assert rounds == {
        (server, index, scenario, model)
        for server, kind, models in (
            ("uncached-student", "paired_uncached", ("teacher", "student")),
            ("uncached-int8", "paired_uncached", ("student_int8",)),
            ("cached-student", "paired_cached", ("teacher", "student")),
            ("cached-int8", "paired_cached", ("student_int8",)),
        )
        for index in range(2)
        for scenario, model in (("paired_floor", "framework"), *((kind, m) for m in models))
    }  # fmt: skip
    assert all(p["failed"] == 0 for p in paired)
    # The cached rounds follow a warm-up of every key: all hits.
    expected = {"paired_floor": 0.0, "paired_uncached": 0.0, "paired_cached": 1.0}
    assert all(p["cached_fraction"] == expected[p["scenario"]] for p in paired)
    assert {p["concurrency"] for p in points} == {1, 3}
    for point in points:
        assert point["failed"] == 0, point
        assert point["completed"] > 0, point
        assert point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"] <= point["max_ms"]
        expected_cached = 1.0 if point["scenario"] == "recommend_cached" else 0.0
        assert point["cached_fraction"] == expected_cached, point
    batch = [p for p in points if p["scenario"] == "predict_batch"]
    single = [p for p in points if p["scenario"] == "predict_single"]
    # A batch answer carries 7 ratings, a single one 1: bodies show the real work was done.
    assert min(p["mean_body_bytes"] for p in batch) > max(p["mean_body_bytes"] for p in single)
    floors = {(f["model"], f["work"]) for f in run["ort_floor"]}
    assert floors == {
        (m, w)
        for m in ("teacher", "student", "student_int8")
        for w in (
            "recommend", "user_tower", "retrieve", "pair_k", "tower_run", "rating_graph_k",
            "pair_graph_k", "score_catalogue", "predict_single", "predict_batch",
            "recommend_service", "recommend_service_cold",
        )
    }  # fmt: skip
    by_work = {(f["model"], f["work"]): f for f in run["ort_floor"]}
    for model in ("teacher", "student", "student_int8"):
        # The two-stage floor rates k items, the catalogue floor every item.
        assert by_work[(model, "pair_k")]["batch"] == 10
        assert by_work[(model, "score_catalogue")]["batch"] == run["n_items"]
        assert (
            by_work[(model, "recommend")]["iterations"] == by_work[(model, "pair_k")]["iterations"]
        )
    assert set(run["retrieval"]) == {"teacher", "student"}
    for variant, sizes in run["retrieval"].items():
        entry = manifest["models"][variant]["retrieval"]["items"]
        assert sizes["items_bytes"] == entry["rows"] * entry["dim"] * 4
    target_ids = {t["id"] for t in run["targets"]}
    assert target_ids == {
        "cached_p50_over_floor",
        "uncached_p50_over_floor",
        "uncached_http_overhead_ms",
        "retrieval_bytes_over_teacher",
        "uncached_throughput_over_teacher",
        "score_catalogue_throughput_over_teacher",
        "failed_requests",
    }

    text = docs.read_text()
    assert "## Targets" in text and "## HTTP results" in text and "paired rounds" in text
    assert "Rating graph p50 over pair graph p50 on the k items, per run: teacher " in text
    assert run["machine"]["cpu_model"] in text
    for image in ("serving-recommend.png", "serving-predict-rating.png"):
        assert (docs.parent / "img" / image).read_bytes().startswith(b"\x89PNG")

    # The report can be rebuilt from saved runs alone, with the spread across them.
    again = tmp_path / "again.md"
    assert serving.main(["--report-only", str(path), str(path), "--docs", str(again)]) == 0
    assert "| run 1 | run 2 |" in again.read_text()
