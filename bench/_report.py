"""Targets of the serving benchmark and its Markdown/PNG report.

Every number in the report comes from the JSON of the runs given; with several runs each
cell shows the median and the min-max range, so that the run-to-run spread is visible.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODELS = ("teacher", "student", "student_int8")
CACHED_FLOOR_RATIO = 1.5
THROUGHPUT_RATIO = 4.0
THROUGHPUT_GOAL = 10.0
HTTP_OVERHEAD_MS = 1.0
_COLORS = {
    "client": "grey",
    "framework": "black",
    "teacher": "tab:red",
    "student": "tab:blue",
    "student_int8": "tab:green",
}
_MARKERS = {
    "loadgen_ceiling": "v",
    "floor": "^",
    "recommend_cached": "s",
    "recommend_uncached": "o",
    "predict_single": "o",
    "predict_batch": "D",
}
_SCENARIO_TITLES = {
    "recommend_uncached": "/recommend, uncached",
    "recommend_cached": "/recommend, cached",
    "predict_single": "/predict_rating, 1 pair",
    "predict_batch": "/predict_rating, batch",
    "floor": "framework floor (/_bench/floor)",
    "loadgen_ceiling": "load generator ceiling (trivial server)",
}


def _point(
    run: dict[str, Any], scenario: str, model: str, concurrency: int
) -> dict[str, Any] | None:
    for point in run["points"]:
        if (point["scenario"], point["model"], point["concurrency"]) == (
            scenario,
            model,
            concurrency,
        ):
            return point
    return None


def _ort(run: dict[str, Any], model: str, work: str) -> dict[str, Any] | None:
    for floor in run["ort_floor"]:
        if (floor["model"], floor["work"]) == (model, work):
            return floor
    return None


def compute_targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ratios measured within this one run."""
    levels = sorted(run["config"]["concurrency"])
    lowest = levels[0]
    targets: list[dict[str, Any]] = []

    floor = _point(run, "floor", "framework", lowest)
    for model in MODELS:
        cached = _point(run, "recommend_cached", model, lowest)
        if floor and cached and floor["p50_ms"] > 0:
            ratio = cached["p50_ms"] / floor["p50_ms"]
            targets.append({
                "id": "cached_p50_over_floor", "model": model, "concurrency": lowest,
                "value": ratio, "limit": f"<= {CACHED_FLOOR_RATIO}",
                "met": ratio <= CACHED_FLOOR_RATIO,
            })  # fmt: skip
    for concurrency in levels:
        teacher = _point(run, "recommend_uncached", "teacher", concurrency)
        for model in ("student", "student_int8"):
            student = _point(run, "recommend_uncached", model, concurrency)
            if teacher and student and teacher["throughput_rps"] > 0:
                ratio = student["throughput_rps"] / teacher["throughput_rps"]
                targets.append({
                    "id": "uncached_throughput_over_teacher", "model": model,
                    "concurrency": concurrency, "value": ratio,
                    "limit": f">= {THROUGHPUT_RATIO} (goal {THROUGHPUT_GOAL})",
                    "met": ratio >= THROUGHPUT_RATIO,
                })  # fmt: skip
    for model in ("student", "student_int8"):
        http = _point(run, "recommend_uncached", model, lowest)
        session = _ort(run, model, "recommend")
        if http and session:
            overhead = http["p50_ms"] - session["p50_ms"]
            targets.append({
                "id": "uncached_http_overhead_ms", "model": model, "concurrency": lowest,
                "value": overhead, "limit": f"<= {HTTP_OVERHEAD_MS} ms",
                "met": overhead <= HTTP_OVERHEAD_MS,
            })  # fmt: skip
    failed = sum(point["failed"] for point in run["points"])
    targets.append({
        "id": "failed_requests", "model": "all", "concurrency": 0, "value": failed,
        "limit": "== 0", "met": failed == 0,
    })  # fmt: skip
    return targets


_TARGET_TEXT = {
    "cached_p50_over_floor": "cached /recommend p50 / framework floor p50",
    "uncached_throughput_over_teacher": "uncached /recommend throughput / teacher's",
    "uncached_http_overhead_ms": "uncached /recommend p50 minus session-run p50 (ms)",
    "failed_requests": "failed requests in the whole run",
}


def _spread(values: list[float], fmt: str) -> str:
    """Median, and the min-max range when runs disagree."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    middle = format(statistics.median(values), fmt)
    if len(values) == 1:
        return middle
    low, high = format(min(values), fmt), format(max(values), fmt)
    return middle if low == high else f"{middle} ({low}–{high})"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _keys(runs: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    seen: dict[tuple[str, str, int], None] = {}
    for run in runs:
        for point in run["points"]:
            seen[(point["scenario"], point["model"], point["concurrency"])] = None
    order = list(_SCENARIO_TITLES)
    model_order = ["client", "framework", *MODELS]
    return sorted(
        seen,
        key=lambda k: (
            order.index(k[0]) if k[0] in order else 99,
            model_order.index(k[1]) if k[1] in model_order else 99,
            k[2],
        ),
    )


def _machine_lines(runs: list[dict[str, Any]]) -> list[str]:
    machine = runs[0]["machine"]
    config = runs[0]["config"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    loads = "; ".join(
        f"run {i}: {r['machine']['loadavg_start'][0]:.2f} → {r['machine']['loadavg_end'][0]:.2f}"
        for i, r in enumerate(runs, 1)
    )
    return [
        f"- CPU: {machine['cpu_model']}, {machine['nproc']} logical CPUs "
        f"({machine['usable_cpus']} usable), {machine['memory_gib']} GiB RAM, "
        f"Linux {machine['kernel']}, Python {machine['python']}",
        f"- Software: {versions}",
        f"- Server: uvicorn, {config['workers']} worker(s), CPUs {config['server_cpus']}, "
        f"ORT_INTRA_OP_THREADS={config['intra_op_threads']}, CPUExecutionProvider, access "
        f"log off; load generator on CPUs {config['load_cpus']} (separate process, raw "
        f"HTTP/1.1 keep-alive over loopback)",
        f"- Cache of the cached scenarios: {config['cache']} (with Redis, the service's "
        f"default in-process near cache sits in front of it, so repeated keys are served "
        f"from process memory); uncached scenarios run on a "
        f"server whose cache holds one entry while users cycle, so every request misses "
        f"(the `cached` column shows the measured hit fraction)",
        f"- Load points: closed loop, at most {config['max_requests']} requests or "
        f"{config['max_seconds']} s each after {config['warmup_requests']} warm-up requests; "
        f"k = {config['k']}; batches of {config['batch_pairs']} pairs",
        f"- 1-minute load average at start → end of each run (other work on the machine "
        f"shows here): {loads}",
    ]


def _plot(runs: list[dict[str, Any]], img_dir: Path) -> list[str]:
    import matplotlib  # noqa: PLC0415  # only the report needs it, and headless

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    img_dir.mkdir(parents=True, exist_ok=True)
    levels = sorted({p["concurrency"] for run in runs for p in run["points"]})
    panels = [
        ("/recommend", ["loadgen_ceiling", "floor", "recommend_cached", "recommend_uncached"]),
        ("/predict_rating", ["predict_single", "predict_batch"]),
    ]
    names = []
    for title, scenarios in panels:
        fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
        for scenario in scenarios:
            for model in ["client", "framework", *MODELS]:
                series = []
                for level in levels:
                    values = [p for run in runs if (p := _point(run, scenario, model, level))]
                    if values:
                        series.append((level, values))
                if not series:
                    continue
                label = {"framework": "framework floor", "client": "load generator ceiling"}.get(
                    model, f"{scenario} · {model}"
                )
                style = {"color": _COLORS.get(model, "grey"), "marker": _MARKERS.get(scenario, "o")}
                xs = [level for level, _ in series]
                rps = [[v["throughput_rps"] for v in vs] for _, vs in series]
                p50 = [[v["p50_ms"] for v in vs] for _, vs in series]
                p99 = [[v["p99_ms"] for v in vs] for _, vs in series]
                med = [statistics.median(r) for r in rps]
                err = [
                    [m - min(r) for m, r in zip(med, rps, strict=True)],
                    [max(r) - m for m, r in zip(med, rps, strict=True)],
                ]
                ax_rps.errorbar(xs, med, yerr=err, capsize=3, label=label, **style)
                ax_lat.plot(xs, [statistics.median(v) for v in p50], label=f"{label} p50", **style)
                ax_lat.plot(
                    xs, [statistics.median(v) for v in p99], linestyle=":", linewidth=1, **style
                )
        for axis in (ax_rps, ax_lat):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xticks(levels, [str(level) for level in levels])
            axis.set_xlabel("concurrent connections")
            axis.grid(True, which="both", alpha=0.3)
        ax_rps.set_ylabel("requests / s (median, bars: min–max of runs)")
        ax_lat.set_ylabel("latency ms (solid p50, dotted p99)")
        ax_rps.set_title(f"{title}: throughput")
        ax_lat.set_title(f"{title}: latency")
        ax_rps.legend(fontsize=7)
        fig.tight_layout()
        name = f"serving-{title.strip('/').replace('_', '-')}.png"
        fig.savefig(img_dir / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def write_report(
    runs: list[dict[str, Any]], *, docs_path: Path, img_dir: Path, note: str = ""
) -> None:
    if not runs:
        raise ValueError("no runs to report")
    lines = [
        "# Serving benchmarks",
        "",
        "Generated by `bench/serving.py` from the runs listed at the end; do not edit by hand.",
        "Command:",
        "",
        "```sh",
        runs[0]["command"],
        "```",
        "",
        f"Bundle `{runs[0]['bundle_version']}` ({runs[0]['n_users']} users, "
        f"{runs[0]['n_items']} items).",
        "With several runs, each cell is the median and, in brackets, the min–max range over "
        "the runs.",
        "",
        "## Machine",
        "",
        *_machine_lines(runs),
        *([f"- Note: {note}"] if note else []),
        "",
        "## Targets (ratios measured within each run)",
        "",
    ]
    target_keys: dict[tuple[str, str, int], dict[str, Any]] = {}
    for run in runs:
        for target in run["targets"]:
            target_keys.setdefault((target["id"], target["model"], target["concurrency"]), target)
    rows = []
    for key, target in target_keys.items():
        per_run = []
        for run in runs:
            match = [t for t in run["targets"] if (t["id"], t["model"], t["concurrency"]) == key]
            per_run.append(match[0] if match else None)
        fmt = "d" if key[0] == "failed_requests" else ".2f"
        cells = [
            "n/a" if t is None else f"{format(t['value'], fmt)} {'✅' if t['met'] else '❌'}"
            for t in per_run
        ]
        where = "" if key[1] == "all" else f"{key[1]}, c={key[2]}"
        rows.append([_TARGET_TEXT.get(key[0], key[0]), where, target["limit"], *cells])
    lines += _table(
        ["target", "model, concurrency", "limit", *[f"run {i}" for i in range(1, len(runs) + 1)]],
        rows,
    )
    lines += ["", "Summary, per target, over every model, concurrency and run:", ""]
    for target_id, text in _TARGET_TEXT.items():
        outcomes = [t["met"] for run in runs for t in run["targets"] if t["id"] == target_id]
        if outcomes:
            lines.append(f"- {text}: met in {sum(outcomes)} of {len(outcomes)} measurements")
    lines += ["", "## HTTP results", ""]
    rows = []
    for scenario, model, level in _keys(runs):
        points = [p for run in runs if (p := _point(run, scenario, model, level))]
        rows.append(
            [
                _SCENARIO_TITLES.get(scenario, scenario),
                model,
                str(level),
                _spread([p["throughput_rps"] for p in points], ".0f"),
                _spread([p["p50_ms"] for p in points], ".2f"),
                _spread([p["p95_ms"] for p in points], ".2f"),
                _spread([p["p99_ms"] for p in points], ".2f"),
                str(sum(p["completed"] for p in points)),
                str(sum(p["failed"] for p in points)),
                _spread([p["cached_fraction"] for p in points], ".2f"),
            ]
        )
    lines += _table(
        [
            "endpoint",
            "model",
            "conc.",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "requests",
            "failed",
            "cached",
        ],
        rows,
    )
    lines += [
        "",
        "## Inference floor: raw ONNX Runtime session run (one thread, in-process)",
        "",
        "`recommend_service` is the service's own scoring path for an uncached /recommend "
        "(features, session run, seen-item mask, top-k, item rows) called in-process without "
        "HTTP; the rest of the HTTP latency is the web stack and its thread hand-offs.",
        "",
    ]
    rows = []
    floor_keys = dict.fromkeys(
        (f["model"], f["work"], f["batch"]) for run in runs for f in run["ort_floor"]
    )
    for model, work, batch in floor_keys:
        floors = [f for run in runs if (f := _ort(run, model, work))]
        rows.append(
            [
                model,
                work,
                str(batch),
                _spread([f["throughput_rps"] for f in floors], ".0f"),
                _spread([f["p50_ms"] for f in floors], ".3f"),
                _spread([f["p95_ms"] for f in floors], ".3f"),
                _spread([f["p99_ms"] for f in floors], ".3f"),
            ]
        )
    lines += _table(["model", "work", "batch rows", "runs/s", "p50 ms", "p95 ms", "p99 ms"], rows)
    names = _plot(runs, img_dir)
    try:
        relative = img_dir.resolve().relative_to(docs_path.resolve().parent)
    except ValueError:
        relative = img_dir.resolve()
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({relative.as_posix()}/{name})" for name in names]
    lines += ["", "## Runs", ""]
    lines += [
        f"- `{Path(run.get('_path', '')).name or run['started_at']}`: started "
        f"{run['started_at']}, {run['duration_s']} s"
        for run in runs
    ]
    lines += [
        "",
        "Reproduce with the command above (`--redis-url` empty caches in-process, "
        "`--workers N` runs several uvicorn workers, `python -m bench.serving --help` lists "
        "the bounds). Timings on a shared or small machine vary between runs; compare "
        "ratios within one run, not absolute numbers across machines.",
        "",
    ]
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text("\n".join(lines))
