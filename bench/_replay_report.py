"""docs/ONLINE.md from one replay run (bench/replay.py); every number comes from the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _interval(bounds: list[float] | None, fmt: str = ".4f") -> str:
    return "-" if not bounds else f"[{bounds[0]:{fmt}}, {bounds[1]:{fmt}}]"


def _variant_rows(run: dict[str, Any]) -> list[str]:
    variants = run["readout"]["variants"]
    offline = run["bundle"]["offline"]
    rows = [
        "| variant | lists served | lists with a hit | online hit rate [95% CI] "
        "| offline HR@10 | online MAE (ratings) | offline MAE |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name in ("teacher", "student"):
        online, model = variants[name], offline.get(name, {})
        rows.append(
            f"| {name} | {online['impressions']} | {online['lists_with_hit']} "
            f"| {_num(online['hit_rate'])} {_interval(online['hit_rate_ci95'])} "
            f"| {_num(model.get('hr@10'))} | {_num(online['online_mae'])} ({online['rated']}) "
            f"| {_num(model.get('mae'))} |"
        )
    return rows


def _readout_lines(run: dict[str, Any]) -> list[str]:
    difference = run["readout"]["difference"]
    return [
        f"- student minus teacher hit rate: {_num(difference['student_minus_teacher'])}",
        f"- 95% interval for one look at a fixed size (Newcombe): {_interval(difference['ci95'])}",
        "- always-valid 95% interval (mSPRT, valid however often the readout is read): "
        f"{_interval(difference['always_valid_ci95'])}",
        f"- always-valid p-value: {_num(difference['p_value'])} ({difference['test']})",
        f"- verdict: **{difference['verdict']}** (margin {difference['margin']})",
    ]


def _shadow_lines(run: dict[str, Any]) -> list[str]:
    shadow = run["readout"]["shadow"]
    return [
        f"SHADOW_PERCENT={shadow['percent']:g}: {shadow['scored']} lists compared, "
        f"{shadow['dropped']} dropped (queue full), {shadow['failed']} failed.",
        "",
        f"- mean overlap@k (share of the served list the other variant also returned): "
        f"{_num(shadow['mean_overlap_at_k'])}",
        f"- mean Spearman correlation on the common items: "
        f"{_num(shadow['mean_rank_correlation'])} ({shadow['rank_correlation_n']} lists with two "
        "or more common items)",
        f"- mean absolute difference of the two variants' ratings of the served items: "
        f"{_num(shadow['mean_abs_rating_diff'])}",
    ]


def render(run: dict[str, Any], *, results_file: Path) -> str:
    bundle, replay, config = run["bundle"], run["replay"], run["config"]
    dataset = bundle["dataset"]
    throughput = run["feedback_throughput"]
    quick = (
        "**a quick-mode bundle** (`--quick`: tiny models, few epochs; its quality is not the "
        "project's, only the loop is exercised)"
        if bundle["quick"]
        else "a full bundle"
    )
    lines = [
        "# Online replay: teacher and student on held-out traffic",
        "",
        "Written by `bench/replay.py` from one run; do not edit by hand. Command:",
        "",
        "```",
        run["command"],
        "```",
        "",
        f"Bundle `{bundle['version']}` ({bundle['dir']}): {quick}, trained on "
        f"{dataset['name']} split {dataset['split']}. {run.get('note', '')}".rstrip(),
        "",
        f"Replayed {replay['users']} of the {replay['users_available']} test users chosen "
        f"(users of the {dataset['split']} test split with at least one test rating >= 4, at "
        f"most {config['max_users']}), {replay['events']} rating events, in "
        f"{replay['seconds']:.1f} s at concurrency {config['concurrency']}"
        + (" (stopped by the time limit)" if replay["timed_out"] else "")
        + ". Each user: `GET /recommend?k="
        + f"{config['k']}` (variant by the sticky 50/50 split), then all of the user's test "
        "ratings as `POST /feedback` rating events naming the request. A rating >= 4 on a "
        "served item is a hit, so the online hit rate is HR@10 over the users that variant "
        "served; online MAE is over every test rating of those users.",
        "",
        "## Online against offline, per variant",
        "",
        *_variant_rows(run),
        "",
        "Offline: protocol P on the whole test split, from the bundle's manifest. Online: "
        "each variant sees about half of the replayed users, so the two differ by sampling "
        "as well as by anything the service does differently from the offline protocol.",
        "",
        "## Readout (`GET /admin/experiment`)",
        "",
        *_readout_lines(run),
        "",
        "## Shadow agreement",
        "",
        *_shadow_lines(run),
        "",
        "## /feedback throughput",
        "",
        f"{throughput['requests']} single attributed click events at concurrency "
        f"{throughput['concurrency']} for {throughput['seconds']:.1f} s: "
        f"**{throughput['per_second']:.0f} requests/s**, p50 {throughput['p50_ms']:.2f} ms, "
        f"p99 {throughput['p99_ms']:.2f} ms, {throughput['failures']} not answered 202. "
        "Each is one Lua lookup, one Lua write (XADD and counters) and the handler.",
        "",
        f"Machine: Python {run['machine']['python']}, {run['machine']['cpus']} CPUs, "
        f"{run['machine']['platform']}; service and load generator on the same machine, "
        "load average (1, 5, 15 min) at the end of the run "
        f"{', '.join(f'{x:.2f}' for x in run['load_average_after'])}. "
        f"Finished {run['finished_at']}; raw results: `{results_file.name}` in bench/results.",
        "",
    ]
    return "\n".join(lines)


def write_report(run: dict[str, Any], path: Path, *, results_file: Path) -> None:
    path.write_text(render(run, results_file=results_file))
