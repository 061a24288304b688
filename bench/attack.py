"""Memory and latency of one worker under a flood of uncached teacher requests.

    python -m bench.attack --model-dir models/current --docs docs/deploy.md

The attack of issue 14: `X-Variant: teacher` with distinct users and varying k at
concurrency 40, every request a cache miss, while another client keeps asking for one
cached list. The service is started the way the images start it (deploy/docker/serve.sh,
one worker), once with admission control as configured by default and once with it
effectively off (INFERENCE_CONCURRENCY=1000), and the worker's resident memory is sampled
from /proc during the attack; its peak (VmHWM) is the number that must stay bounded.

Writes bench/results/attack-<timestamp>.json and, with --docs, the table between the
`bench.attack` markers of that file. `--build-bundle DIR` first builds a bundle with the
full model shapes but one epoch per teacher component (memory and time per request depend
on the shapes, not on how well the weights are trained), for machines where the full
`make bundle` training does not fit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.bundle import load_bundle
from bench._loadgen import LoadResult, LoadRunner, LoadSpec, build_get
from bench._server import HOST, free_port, wait_ready

logger = logging.getLogger("bench.attack")
_REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_SH = _REPO_ROOT / "deploy" / "docker" / "serve.sh"
BEGIN, END = "<!-- bench.attack:begin -->", "<!-- bench.attack:end -->"
# Admission effectively off: the behaviour before issue 14.
UNBOUNDED = {"INFERENCE_CONCURRENCY": "1000", "INFERENCE_QUEUE_MAX": "0"}


@dataclass(frozen=True)
class Setup:
    name: str
    env: dict[str, str]


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@contextlib.contextmanager
def _served(model_dir: Path, extra: dict[str, str], log_path: Path) -> Iterator[tuple[int, int]]:
    """serve.sh with one worker on a free port; yields (port, pid of the worker)."""
    port = free_port()
    env = {
        **os.environ,
        "HOST": HOST,
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "MODEL_DIR": str(model_dir),
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(_REPO_ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", str(SERVE_SH)], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://{HOST}:{port}", timeout_s=180, process=process)
        yield port, process.pid  # one worker: uvicorn serves in the process serve.sh execs
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _requests(model_dir: Path, port: int) -> tuple[list[bytes], bytes]:
    """The attack (distinct user, k and flag: all misses) and the victim's cached request."""
    users = load_bundle(model_dir).user_ids
    host = f"{HOST}:{port}"
    attack = [
        build_get(
            f"/recommend?user_id={user}&k={k}&exclude_seen={'true' if flag else 'false'}",
            host=host,
            headers={"X-Variant": "teacher"},
        )
        for k in range(1, 101)
        for flag in (True, False)
        for user in users
    ]
    victim = build_get(f"/recommend?user_id={users[0]}&k=10", host=host)
    return attack, victim


def _sample_rss(pid: int, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, KeyError):
            samples.append(_kib(pid, "VmRSS"))
        stop.wait(0.05)


def measure(setup: Setup, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    with _served(args.model_dir, setup.env, log_dir / f"{setup.name}.log") as (port, pid):
        attack, victim = _requests(args.model_dir, port)
        spec = LoadSpec(
            host=HOST, port=port, requests=attack, concurrency=args.concurrency,
            max_requests=10**9, max_seconds=args.seconds,
        )  # fmt: skip
        victim_spec = LoadSpec(
            host=HOST, port=port, requests=[victim], concurrency=1,
            max_requests=10**9, max_seconds=args.seconds, warmup_requests=50,
        )  # fmt: skip
        with LoadRunner() as warm:  # load both models' sessions and fill the victim's entry
            warm.run(replace(spec, max_requests=200, max_seconds=10, concurrency=4))
            warm.run(replace(victim_spec, max_seconds=2))
        idle_kib = _kib(pid, "VmRSS")
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(pid, stop, samples))
        sampler.start()
        with LoadRunner() as attacker, LoadRunner() as bystander, ThreadPoolExecutor(2) as pool:
            attacked = pool.submit(attacker.run, spec)
            cached = pool.submit(bystander.run, victim_spec)
            attack_result, victim_result = attacked.result(), cached.result()
        stop.set()
        sampler.join()
        time.sleep(1.0)
        return {
            "setup": setup.name,
            "env": setup.env,
            "idle_rss_mib": idle_kib / 1024,
            "peak_rss_mib": _kib(pid, "VmHWM") / 1024,
            "sampled_max_rss_mib": max(samples, default=0) / 1024,
            "after_rss_mib": _kib(pid, "VmRSS") / 1024,
            "attack": _brief(attack_result),
            "cached_victim": _brief(victim_result),
        }


def _brief(result: LoadResult) -> dict[str, Any]:
    keep = ("completed", "status_counts", "throughput_rps", "p50_ms", "p99_ms", "cached_fraction")
    return {k: v for k, v in asdict(result).items() if k in keep}


def build_shape_bundle(data_dir: Path | None, out_dir: Path) -> Path:
    """Full model shapes, one epoch per teacher component, quick student training."""
    from bench._shapes import ShapeConfig  # noqa: PLC0415 - torch only when building
    from training.pipeline import run_pipeline  # noqa: PLC0415

    config = ShapeConfig(
        data_dir=data_dir, dataset="ml-100k", split="none", out_dir=out_dir, quick=True,
        threads=1, progress=False, latency_runs=5,
    )  # fmt: skip
    run_pipeline(config)
    return (out_dir / "current").resolve()


def _table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| admission | idle RSS | peak RSS (VmHWM) | RSS after | attack: 200 / 503 / other |"
        " attack p50 / p99 | cached bystander p50 / p99 |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for run in runs:
        counts = run["attack"]["status_counts"]
        other = sum(n for code, n in counts.items() if code not in ("200", "503"))
        lines.append(
            f"| {run['setup']} | {run['idle_rss_mib']:.0f} MiB | {run['peak_rss_mib']:.0f} MiB"
            f" | {run['after_rss_mib']:.0f} MiB"
            f" | {counts.get('200', 0)} / {counts.get('503', 0)} / {other}"
            f" | {run['attack']['p50_ms']:.1f} / {run['attack']['p99_ms']:.1f} ms"
            f" | {run['cached_victim']['p50_ms']:.2f} / {run['cached_victim']['p99_ms']:.2f} ms |"
        )
    return lines


def write_docs(path: Path, report: dict[str, Any], results_file: Path) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block to fill")
    body = [
        BEGIN,
        f"Measured by `{report['command']}` ({results_file.relative_to(_REPO_ROOT)}); "
        f"{report['machine']}; bundle `{report['bundle']}`, {report['seconds']:.0f} s of attack "
        f"at concurrency {report['concurrency']}.",
        "",
        *_table(report["runs"]),
        END,
    ]
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + "\n".join(body) + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=_REPO_ROOT / "models" / "current")
    parser.add_argument("--build-bundle", type=Path, help="first build a shape bundle here")
    parser.add_argument("--data-dir", type=Path, help="MovieLens-100K for --build-bundle")
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--docs", type=Path, help="fill the bench.attack block of this file")
    parser.add_argument("--results-dir", type=Path, default=_REPO_ROOT / "bench" / "results")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.build_bundle:
        args.model_dir = build_shape_bundle(args.data_dir, args.build_bundle)
    args.model_dir = args.model_dir.resolve()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    setups = [Setup("on (defaults)", {}), Setup("off (before issue 14)", dict(UNBOUNDED))]
    with tempfile.TemporaryDirectory(prefix="bench-attack-") as logs:
        runs = [measure(setup, args, Path(logs)) for setup in setups]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "command": "python -m bench.attack " + shlex.join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "bundle": args.model_dir.name,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "note": args.note,
        "runs": runs,
    }
    results_file = args.results_dir / f"attack-{stamp}.json"
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(_table(runs)))
    if args.docs:
        write_docs(args.docs, report, results_file)


if __name__ == "__main__":
    main()
