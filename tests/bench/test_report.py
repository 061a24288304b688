"""Targets and report of the serving benchmark, on synthetic run dicts (bench/_report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench._report import compute_targets, paired_ratios, write_report


def _point(scenario: str, model: str, p50: float, rps: float, c: int = 1) -> dict[str, Any]:
    return {
        "scenario": scenario, "model": model, "server": "s", "concurrency": c,
        "throughput_rps": rps, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "max_ms": p50,
        "completed": 10, "failed": 0, "cached_fraction": 0.0,
    }  # fmt: skip


def _floor(model: str, work: str, p50: float, rps: float) -> dict[str, Any]:
    return {
        "model": model, "work": work, "batch": 10, "iterations": 10, "p50_ms": p50,
        "p95_ms": p50, "p99_ms": p50, "throughput_rps": rps,
    }  # fmt: skip


def _run(*, teacher_p50: float, student_p50: float, student_dim: int = 20) -> dict[str, Any]:
    points = [
        _point("floor", "framework", 0.5, 2000),
        _point("recommend_cached", "teacher", 0.6, 1600),
        _point("recommend_cached", "student", 0.6, 1600),
        _point("recommend_uncached", "teacher", teacher_p50, 1000 / teacher_p50),
        _point("recommend_uncached", "student", student_p50, 1000 / student_p50),
    ]
    floors = [
        _floor("teacher", "recommend", teacher_p50 - 0.5, 500),
        _floor("student", "recommend", student_p50 - 0.8, 900),
        _floor("teacher", "score_catalogue", 40.0, 25),
        _floor("student", "score_catalogue", 1.0, 1000),
    ]
    return {
        "config": {"concurrency": [1]},
        "points": points,
        "ort_floor": floors,
        "retrieval": {
            "teacher": {"rows": 100, "dim": 80, "items_bytes": 100 * 80 * 4, "ann_bytes": 0},
            "student": {
                "rows": 100,
                "dim": student_dim,
                "items_bytes": 100 * student_dim * 4,
                "ann_bytes": 0,
            },
        },
    }


def _by_id(targets: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(t["id"], t["model"]): t for t in targets}


def test_uncached_p50_over_the_framework_floor_has_per_variant_limits() -> None:
    # Teacher 1.4 ms over a 0.5 ms floor is 2.8x (limit 3); student 1.2 ms is 2.4x (limit 2).
    targets = _by_id(compute_targets(_run(teacher_p50=1.4, student_p50=1.2)))

    teacher = targets[("uncached_p50_over_floor", "teacher")]
    student = targets[("uncached_p50_over_floor", "student")]
    assert (round(teacher["value"], 6), teacher["limit"], teacher["met"]) == (2.8, "<= 3.0", True)
    assert (round(student["value"], 6), student["limit"], student["met"]) == (2.4, "<= 2.0", False)

    met = _by_id(compute_targets(_run(teacher_p50=1.6, student_p50=0.9)))
    assert met[("uncached_p50_over_floor", "teacher")]["met"] is False
    assert met[("uncached_p50_over_floor", "student")]["met"] is True


def _paired(scenario: str, model: str, p50: float, round_index: int, server: str) -> dict[str, Any]:
    return {**_point(scenario, model, p50, 1000 / p50), "round": round_index, "server": server}


def test_paired_rounds_divide_by_the_floor_just_before_them() -> None:
    run = _run(teacher_p50=1.4, student_p50=1.2)
    # The machine slows down between rounds: floor and /recommend drift together.
    for index, (floor, teacher, student) in enumerate(
        [(0.5, 1.4, 0.9), (1.0, 2.6, 1.9), (0.4, 1.3, 0.7)]
    ):
        run["points"] += [
            _paired("paired_floor", "framework", floor, index, "uncached"),
            _paired("paired_uncached", "teacher", teacher, index, "uncached"),
            _paired("paired_uncached", "student", student, index, "uncached"),
        ]
    # Another server's floor never divides this server's rounds.
    run["points"].append(_paired("paired_floor", "framework", 9.0, 0, "other"))

    assert [round(r, 6) for r in paired_ratios(run, "teacher")] == [2.8, 2.6, 3.25]
    targets = _by_id(compute_targets(run))
    teacher = targets[("uncached_p50_over_floor", "teacher")]
    student = targets[("uncached_p50_over_floor", "student")]
    assert (round(teacher["value"], 6), teacher["met"]) == (2.8, True)
    assert (round(student["value"], 6), student["met"]) == (1.8, True)  # 1.8, 1.9, 1.75
    assert paired_ratios(run, "student_int8") == []


def test_cached_targets_divide_by_their_own_servers_paired_floors() -> None:
    run = _run(teacher_p50=1.4, student_p50=1.2)
    # Unpaired, the cached student reads 0.9 / 0.5 = 1.8x the floor of another server.
    for point in run["points"]:
        if (point["scenario"], point["model"]) == ("recommend_cached", "student"):
            point["p50_ms"] = 0.9
    unpaired = _by_id(compute_targets(run))[("cached_p50_over_floor", "student")]
    assert (round(unpaired["value"], 6), unpaired["met"]) == (1.8, False)
    for index, (floor, cached) in enumerate([(0.6, 0.8), (0.8, 0.9), (0.5, 0.6)]):
        run["points"] += [
            _paired("paired_floor", "framework", floor, index, "cached"),
            _paired("paired_cached", "student", cached, index, "cached"),
        ]
    assert [round(r, 6) for r in paired_ratios(run, "student", cached=True)] == [
        round(0.8 / 0.6, 6), 1.125, 1.2,
    ]  # fmt: skip
    paired = _by_id(compute_targets(run))[("cached_p50_over_floor", "student")]
    assert (round(paired["value"], 6), paired["met"]) == (1.2, True)
    # The uncached ratios never read the cached rounds, nor the other way round.
    assert paired_ratios(run, "student") == [] and paired_ratios(run, "teacher", cached=True) == []


def test_http_overhead_is_measured_against_the_two_stage_floor() -> None:
    targets = _by_id(compute_targets(_run(teacher_p50=1.4, student_p50=1.2)))
    overhead = targets[("uncached_http_overhead_ms", "student")]
    assert round(overhead["value"], 6) == 0.8
    assert overhead["met"] is True


def test_comparisons_carry_no_verdict_and_memory_has_a_third_as_limit() -> None:
    targets = _by_id(compute_targets(_run(teacher_p50=1.4, student_p50=1.2)))

    throughput = targets[("uncached_throughput_over_teacher", "student")]
    catalogue = targets[("score_catalogue_throughput_over_teacher", "student")]
    assert throughput["met"] is None and catalogue["met"] is None
    assert round(catalogue["value"], 6) == 40.0
    memory = targets[("retrieval_bytes_over_teacher", "student")]
    assert (memory["value"], memory["met"]) == (0.25, True)

    wide = _by_id(compute_targets(_run(teacher_p50=1.4, student_p50=1.2, student_dim=40)))
    assert wide[("retrieval_bytes_over_teacher", "student")]["met"] is False


def test_report_keeps_the_catalogue_section_and_leaves_comparisons_out_of_the_summary(
    tmp_path: Path,
) -> None:
    run = _run(teacher_p50=1.4, student_p50=1.2)
    run.update(
        command="python -m bench.serving",
        bundle_version="v1",
        n_users=10,
        n_items=100,
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=1.0,
        machine={
            "cpu_model": "cpu", "nproc": 2, "usable_cpus": 2, "memory_gib": 1.0,
            "kernel": "k", "python": "3", "versions": {}, "loadavg_start": [0.0],
            "loadavg_end": [0.0],
        },
    )  # fmt: skip
    run["config"].update(
        workers=1, intra_op_threads=1, server_cpus=[0], load_cpus=[1], cache="redis",
        max_requests=10, max_seconds=1.0, warmup_requests=1, k=10, batch_pairs=5,
        admission={"inference_concurrency": 2, "queue_max": 16, "queue_seconds": 60.0},
        feedback_loop="off; on only in recommend_cached_loop",
    )  # fmt: skip
    run["targets"] = compute_targets(run)
    docs = tmp_path / "BENCHMARKS.md"
    block = "<!-- catalogue:begin -->\n## Catalogue size\n\n| a |\n<!-- catalogue:end -->"
    docs.write_text(f"# old report\n\n{block}\n", encoding="utf-8")

    write_report([run], docs_path=docs, img_dir=tmp_path / "img")

    text = docs.read_text(encoding="utf-8")
    assert block in text and "# old report" not in text
    assert "INFERENCE_QUEUE_SECONDS=60" in text
    assert "| student | 100 | 20 | 8000 | 0 | 8000 |" in text
    summary = text.split("Summary, per target", 1)[1].split("## HTTP results", 1)[0]
    assert "uncached /recommend p50 / framework floor p50: met in 1 of 2" in summary
    assert "throughput" not in summary
    advantage = text.split("## Student against teacher", 1)[1]
    assert "dimension 20 against 80, 8000 against 32000 bytes (0.25x)" in advantage
    assert "(`score_catalogue`, candidate re-ranking) runs/s ratio: 40.00" in advantage
    assert "teacher 2.80x (limit 3x), student 2.40x (limit 2x); met in 1 of 2" in advantage
    # Rewriting keeps the block exactly once.
    write_report([run], docs_path=docs, img_dir=tmp_path / "img")
    assert docs.read_text(encoding="utf-8").count("catalogue:begin") == 1
