"""Scale benchmark: loading, training throughput and the whole pipeline on large data.

    python -m bench.scale [--sets ml1m,ml10m,cat50k,cat1m] [--quick] [--nproc 1,2] [--work DIR]
                          [--pipeline-limit SECONDS] [--movielens-1m DIR] [--movielens-100k DIR]
                          [--device cpu|cuda] [--batch-factors 1,8] [--pipeline-only]
                          [--jobs 0,1,3]

Synthetic data sets in the ml-latest format (training.synth; reused when WORK/NAME
already holds ratings.csv): ML-1M-shaped (6,000 users, 4,000 items, 1M ratings),
ML-10M-shaped (70,000 users, 10,000 items, 10M ratings), and large catalogues (50,000 and
1,000,000 items). Real ML-1M is added when --movielens-1m (or $MOVIELENS_1M_DIR) is given,
real ml-100k with --movielens-100k (its pipeline run trains on all of it, as `make run`).

For each set it measures, each in a fresh process so peak RSS is its own: load time and
peak RSS; training throughput of each teacher component (ratings per second over a
bounded number of batches, one thread, `--quick` sizes when --quick; on --device, and
also at --batch-factors times the components' batch sizes); and the pipeline
(`python -m training pipeline --split random`, full or --quick; `--split none` on
ml-100k) with the time of every step and peak RSS, stopped at --pipeline-limit. Writes
bench/results/scale.json and the measured part of docs/SCALE.md (between its bench.scale
markers). The machine's load is recorded with the numbers: on a shared machine they are
noisy.

A run merges into the previous results (--out-json): the sets and pipeline modes it
measured replace theirs, the others keep their rows, and every row names the run it comes
from, so that one expensive row can be re-measured without re-running the rest.
--fresh starts from nothing. Results are written after every set, so an interrupted run
keeps the sets it finished. A GPU run (`bench/gpu.sh`) keeps its own results file and
section (--out-json, --marker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench._machine import cpu_model
from bench._sections import replace_section

ROOT = Path(__file__).resolve().parent.parent
SETS: dict[str, tuple[int, int, int]] = {  # users, items, ratings
    "ml1m": (6_000, 4_000, 1_000_000),
    "ml10m": (70_000, 10_000, 10_000_000),
    "cat50k": (6_000, 50_000, 1_000_000),
    "cat1m": (20_000, 1_000_000, 1_000_000),
}
COMPONENTS = ("mf", "xdeepfm", "autoint")
MARKER = "bench.scale"
_STEP_LINE = re.compile(r"\[\d+/\d+\] (\w+): ([0-9.]+) s")

log = logging.getLogger("bench.scale")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="ml1m,cat50k,cat1m", help="comma-separated of SETS")
    parser.add_argument("--quick", action="store_true", help="pipeline in --quick mode")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-scale"))
    parser.add_argument("--batches", type=int, default=100, help="batches per throughput run")
    parser.add_argument("--pipeline-limit", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--no-pipeline", action="store_true", help="load and throughput only")
    parser.add_argument(
        "--pipeline-sets",
        default=None,
        help="comma-separated sets that also get pipeline runs (default: every set)",
    )
    parser.add_argument(
        "--device", default="cpu", help="device of the throughput and pipeline runs (cpu, cuda)"
    )
    parser.add_argument(
        "--batch-factors",
        default="1",
        help="comma-separated multiples of the components' batch sizes for throughput",
    )
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="pipeline runs alone; the sets' earlier load and throughput rows stay",
    )
    parser.add_argument(
        "--nproc",
        default="1",
        help="comma-separated process counts for the pipeline (2 = torchrun, 2 processes)",
    )
    parser.add_argument(
        "--jobs",
        default="0",
        help="comma-separated counts of processes training the teacher's components in a "
        "one-process pipeline (the pipeline's --jobs; 0 = its auto)",
    )
    parser.add_argument(
        "--movielens-1m", type=Path, default=os.environ.get("MOVIELENS_1M_DIR") or None
    )
    parser.add_argument(
        "--movielens-100k",
        type=Path,
        default=None,
        help="real ml-100k (e.g. $MOVIELENS_DIR): its pipeline run is make run's (--split none)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="drop the previous results instead of merging"
    )
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "SCALE.md")
    parser.add_argument("--out-json", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    parser.add_argument(
        "--marker", default=MARKER, help="name of the section of --out-md the results replace"
    )
    return parser.parse_args(argv)


# Seconds between readings of the process tree's resident sets. Each process's own peak
# is its kernel high-water mark (exact whatever the interval); only the tree's sum is
# sampled, and it moves over seconds.
SAMPLE_S = 0.5


def run_measured(cmd: list[str], *, limit: float, log_path: Path) -> dict[str, Any]:
    """Runs `cmd` in a fresh process: wall seconds, peak RSS (GB), exit code, timeout.

    Memory covers the process and every descendant (torchrun's workers, the teacher's
    component processes): `peak_rss_gb` is the largest single process's own high-water
    mark, `peak_tree_rss_gb` the largest sum of the tree's resident sets seen at once.
    """
    # The tree first, before whatever the caller's PYTHONPATH holds (a lent GPU machine
    # carries missing packages there).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = started + limit
        timed_out = False
        memory = TreeMemory(proc.pid)
        sampled = 0.0
        while True:
            # Finding the descendants scans every process of the machine: at the 20 ms of
            # the exit poll it took about a sixth of a core from the run it measured.
            if time.perf_counter() - sampled >= SAMPLE_S:
                memory.sample()
                sampled = time.perf_counter()
            else:
                # One status file, cheap at every poll: a process that exits within
                # SAMPLE_S (a load) would otherwise keep its reading from its first moment.
                memory.sample_root()
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline and not timed_out:
                for child in memory.descendants():
                    child.kill()
                proc.kill()
                timed_out = True
            time.sleep(0.02)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_gb": memory.peak_process_kb() / 1e6,
        "peak_tree_rss_gb": memory.peak_tree_kb / 1e6,
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
    }


class TreeMemory:
    """Memory readings of a process tree, sampled while it runs.

    Each process's own high-water mark is VmHWM (reset by exec), not rusage: Linux carries
    ru_maxrss across fork and exec, so every child would report at least this benchmark's
    own peak. psutil finds the descendants; the sum of their current RSS is sampled.
    """

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.hwm_kb: dict[int, int] = {}
        self.peak_tree_kb = 0

    def descendants(self) -> list[psutil.Process]:
        try:
            return list(self.root.children(recursive=True))
        except psutil.Error:
            return []

    def sample(self) -> None:
        total = 0
        for proc in [self.root, *self.descendants()]:
            hwm, rss = _status_kb(proc.pid)
            self.hwm_kb[proc.pid] = max(self.hwm_kb.get(proc.pid, 0), hwm)
            total += rss
        self.peak_tree_kb = max(self.peak_tree_kb, total)

    def sample_root(self) -> None:
        """The root's high-water mark alone (no scan for descendants)."""
        hwm, _ = _status_kb(self.root.pid)
        self.hwm_kb[self.root.pid] = max(self.hwm_kb.get(self.root.pid, 0), hwm)

    def peak_process_kb(self) -> int:
        return max(self.hwm_kb.values(), default=0)


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a live process in kB; zeros once it has exited."""
    found = {"VmHWM:": 0, "VmRSS:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0] + ":"
            if key in found:
                found[key] = int(line.split()[1])
    except (OSError, ValueError):
        pass  # the process has just exited: its last reading stands
    return found["VmHWM:"], found["VmRSS:"]


def ensure_data(name: str, work: Path) -> Path:
    out = work / name
    if (out / "ratings.csv").is_file():
        return out
    from training.synth import SynthConfig, generate  # noqa: PLC0415

    users, items, ratings = SETS[name]
    generate(SynthConfig(users, items, ratings, seed=0), out)
    return out


def measure_load(data: Path, dataset: str, work: Path) -> dict[str, Any]:
    code = (
        "import sys, time; from pathlib import Path; from training.data import load_dataset; "
        "t = time.perf_counter(); load_dataset(Path(sys.argv[1]), dataset=sys.argv[2]); "
        "print('load_seconds', time.perf_counter() - t)"
    )
    log_path = work / f"load-{data.name}.log"
    out = run_measured(
        [sys.executable, "-c", code, str(data), dataset], limit=3600, log_path=log_path
    )
    match = re.search(r"load_seconds ([0-9.]+)", log_path.read_text())
    out["load_seconds"] = float(match.group(1)) if match else None
    return out


def measure_throughput(
    data: Path, dataset: str, *, quick: bool, batches: int, device: str, factor: int = 1
) -> dict[str, Any]:
    """Ratings per second of each component's training steps (one thread, no validation),
    at `factor` times the components' batch sizes, on `device`."""
    import torch  # noqa: PLC0415

    from training import train as T  # noqa: PLC0415
    from training.allocator import keep_freed_memory  # noqa: PLC0415
    from training.data import load_dataset  # noqa: PLC0415
    from training.device import resolve_device  # noqa: PLC0415

    keep_freed_memory()  # as `python -m training` does
    torch.set_num_threads(1)
    dev = resolve_device(device)
    ds = load_dataset(data, dataset=dataset)
    config = T.TeacherConfig().quick() if quick else T.TeacherConfig()
    results: dict[str, Any] = {}
    for name in COMPONENTS:
        comp = getattr(config, name)
        comp = dataclasses.replace(comp, batch_size=comp.batch_size * factor)
        T.set_seed(0)
        data_t = T.TrainData.build(ds.ratings, ds.tables, ds.feature_map, device=dev)
        # As training builds it: MF with its users' histories, large tables sparse.
        model = T.training_model(name, ds.feature_map, comp, data_t, global_mean=3.5)
        gen = torch.Generator().manual_seed(0)
        trainer = T.Trainer(name, model, comp, data_t, T.make_optimizer(model, comp), gen, False)
        perm = torch.randperm(len(data_t), generator=gen)
        size = comp.batch_size
        T.train_step(trainer, perm[:size])  # warm-up: lazy optimiser state, CUDA's start
        # train_step reads its losses back (float()), so each step has finished on the
        # device when it returns: the wall clock times the GPU's work too.
        started = time.perf_counter()
        n = 0
        for b in range(1, batches + 1):
            idx = perm[b * size : (b + 1) * size]
            if idx.numel() == 0:
                break
            T.train_step(trainer, idx)
            n += idx.numel()
        seconds = time.perf_counter() - started
        results[name] = {
            "ratings_per_s": n / seconds,
            "epoch_seconds_est": len(data_t) / (n / seconds),
            "batch_size": size,
        }
        log.info("%s %s x%d: %.0f ratings/s", data.name, name, factor, n / seconds)
    return results


def measure_pipeline(
    data: Path,
    dataset: str,
    work: Path,
    *,
    quick: bool,
    limit: float,
    device: str,
    nproc: int,
    jobs: int = 0,
) -> dict[str, Any]:
    # ml-100k trains on all of it, as `make run` does; the others keep a test split.
    split = "none" if dataset == "ml-100k" else "random"
    tag = f"{data.name}{'-quick' if quick else ''}-{nproc}p{f'-{jobs}j' if jobs else ''}"
    out_dir = work / f"run-{tag}"
    # The pipeline resumes from the checkpoints of an equal run key (same data, settings
    # and code), so a second run of the same code would time a few seconds of reloading.
    shutil.rmtree(out_dir, ignore_errors=True)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "-m", "training", "pipeline", "--data-dir", str(data)]
    cmd += ["--dataset", dataset, "--split", split, "--out-dir", str(out_dir)]
    cmd += ["--no-progress", "--device", device, "--jobs", str(jobs)]
    cmd += ["--quick"] if quick else []
    log_path = work / f"pipeline-{tag}.log"
    out = run_measured(cmd, limit=limit, log_path=log_path)
    out["steps"] = {
        m.group(1): float(m.group(2)) for m in _STEP_LINE.finditer(log_path.read_text())
    }
    out["quick"] = quick
    out["nproc"] = nproc
    out["split"] = split
    from training.component_pool import resolve_jobs  # noqa: PLC0415
    from training.device import resolve_device  # noqa: PLC0415

    # Processes training the teacher's components: torchrun ranks train them in turn, and
    # the pipeline's auto does in --quick mode and on a GPU.
    auto_in_turn = quick or resolve_device(device).type != "cpu"
    in_turn = nproc > 1 or (auto_in_turn and not jobs)
    out["component_jobs"] = 1 if in_turn else resolve_jobs(jobs, threads=1, tasks=len(COMPONENTS))
    return out


def conditions() -> dict[str, Any]:
    import torch  # noqa: PLC0415

    # Machines of one kind differ in host CPU: torch picks its kernels by the instruction
    # set (AVX2, AVX512), which changes speed and the last digits of trained weights.
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _upgrade(results: dict[str, Any]) -> dict[str, Any]:
    """Results of one run (the format before merging) as a one-run history."""
    if "runs" in results:
        return results
    sets = {
        name: {
            **entry,
            "run": 1,
            "pipeline": [{**p, "run": 1} for p in entry.get("pipeline", [])],
        }
        for name, entry in results["sets"].items()
    }
    run = {"command": results["command"], "conditions": results["conditions"]}
    return {"runs": [run], "sets": sets}


def _row_key(p: dict[str, Any]) -> tuple[bool, int, int]:
    """A pipeline row's mode and processes: a run replaces the rows of its own."""
    return p["quick"], p["nproc"], p.get("component_jobs", 1)


def merge(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """`current` (one run) over `previous`: a set's load and throughput, and its pipeline
    rows of the same mode and process counts (`_row_key`), are replaced; the rest stay,
    with their runs.
    Runs no row cites any more are dropped and the rest renumbered in order."""
    merged = _upgrade(previous) if previous else {"runs": [], "sets": {}}
    runs = [*merged["runs"], {"command": current["command"], "conditions": current["conditions"]}]
    sets: dict[str, Any] = dict(merged["sets"])
    for name, entry in current["sets"].items():
        old = sets.get(name, {})
        new_rows = [{**p, "run": len(runs)} for p in entry.get("pipeline", [])]
        replaced = {_row_key(p) for p in new_rows}
        kept = [p for p in old.get("pipeline", []) if _row_key(p) not in replaced]
        # A --pipeline-only entry has no load: the set's earlier rows and their run stay.
        base = {**entry, "run": len(runs)} if "load" in entry or not old else old
        sets[name] = {**base, "pipeline": kept + new_rows}
    cited = sorted(
        {e["run"] for e in sets.values()} | {p["run"] for e in sets.values() for p in e["pipeline"]}
    )
    number = {old: new for new, old in enumerate(cited, start=1)}
    renumbered = {
        name: {
            **entry,
            "run": number[entry["run"]],
            "pipeline": [{**p, "run": number[p["run"]]} for p in entry["pipeline"]],
        }
        for name, entry in sets.items()
    }
    return {"runs": [runs[i - 1] for i in cited], "sets": renumbered}


def _run_line(number: int, run: dict[str, Any]) -> str:
    c = run["conditions"]
    # Runs before 2026-12-03 16:50 UTC did not record the CPU.
    cpu = f" ({c['cpu_model']}, torch kernels {c['cpu_capability']})" if "cpu_model" in c else ""
    gpu = f", GPU {c['gpu']}" if c.get("gpu") else ""
    return (
        f"{number}. {c['when']}: `{run['command']}`; {c['cpus']} CPUs{cpu}{gpu}, load average "
        f"{c['load_average_1m']:.1f} when it started, torch {c['torch']}."
    )


def _pipeline_row(name: str, p: dict[str, Any]) -> str:
    steps = ", ".join(f"{k} {v:.0f}" for k, v in p["steps"].items())
    done = "yes" if p["returncode"] == 0 else ("timed out" if p["timed_out"] else "failed")
    procs = (
        f"{p['nproc']} (torchrun)"
        if p["nproc"] > 1
        else f"1 ({p.get('component_jobs', 1)} for the components)"
    )
    tree = f"{p['peak_tree_rss_gb']:.2f}" if "peak_tree_rss_gb" in p else "-"
    return (
        f"| {name} | {'quick' if p['quick'] else 'full'} | {procs} | {p['seconds']:.0f} | "
        f"{p['peak_rss_gb']:.2f} | {tree} | {done} | {steps} | {p['run']} |"
    )


def _markers(marker: str) -> tuple[str, str]:
    return f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"


def _throughput_rows(name: str, r: dict[str, Any]) -> list[str]:
    """The set's row (load, and throughput at the components' batch sizes), then one row
    per larger batch factor measured."""
    load = r.get("load", {})
    by_factor = {1: r.get("throughput", {})} | {
        int(f): tp for f, tp in r.get("throughput_by_factor", {}).items()
    }
    rows = []
    for factor, tp in sorted(by_factor.items()):
        cells = [f"{tp[c]['ratings_per_s']:.0f}" if c in tp else "-" for c in COMPONENTS]
        head = (
            f"| {name} | {load.get('load_seconds') or float('nan'):.1f} | "
            f"{load.get('peak_rss_gb', float('nan')):.2f} | "
            if factor == 1
            else f"| {name}, batch x{factor} | - | - | "
        )
        rows.append(head + " | ".join(cells) + f" | {r['run']} |")
    return rows


def render(results: dict[str, Any], marker: str = MARKER) -> str:
    begin, end = _markers(marker)
    lines = [begin, "", "Runs (other work may have shared the machine; its load is noted):", ""]
    lines += [_run_line(i, run) for i, run in enumerate(results["runs"], start=1)]
    lines += [
        "",
        "| data set | load s | load peak RSS GB | mf r/s | xdeepfm r/s | autoint r/s | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["sets"].items():
        lines += _throughput_rows(name, r)
    lines += [
        "",
        "Peak RSS: the largest single process; all processes: the largest sum of the "
        "resident sets of the run's processes at one time (torchrun's launcher and workers, "
        "the teacher's component processes; - where a run predates that reading).",
        "",
        "| data set | mode | processes | total s | peak RSS GB | all processes GB | finished "
        "| s per step | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        _pipeline_row(name, p)
        for name, r in results["sets"].items()
        for p in sorted(r["pipeline"], key=_row_key)
    ]
    lines += ["", end]
    return "\n".join(lines)


def write_markdown(path: Path, section: str, marker: str = MARKER) -> None:
    begin, end = _markers(marker)
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# Scale\n\n{begin}\n{end}\n"
    path.write_text(replace_section(text, section, begin=begin, end=end), encoding="utf-8")


def _data_sets(args: argparse.Namespace) -> list[tuple[str, Path, str]]:
    """(name, folder, --dataset) of every set asked for; synthetic ones generated once."""
    sets: list[tuple[str, Path, str]] = []
    for name in [s for s in args.sets.split(",") if s]:
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}; choose from {', '.join(SETS)}")
        sets.append((name, ensure_data(name, args.work), "ml-latest"))
    if args.movielens_1m is not None:
        sets.append(("real-ml-1m", Path(args.movielens_1m), "ml-1m"))
    if args.movielens_100k is not None:
        sets.append(("real-ml-100k", Path(args.movielens_100k), "ml-100k"))
    return sets


def measure_set(args: argparse.Namespace, name: str, data: Path, dataset: str) -> dict[str, Any]:
    """One set's rows: load and throughput (unless --pipeline-only), then its pipelines."""
    entry: dict[str, Any] = {}
    if not args.pipeline_only:
        entry["load"] = measure_load(data, dataset, args.work)
        factors = [int(f) for f in args.batch_factors.split(",")]
        measured = {
            f: measure_throughput(
                data, dataset, quick=args.quick, batches=args.batches, device=args.device, factor=f
            )
            for f in factors
        }
        entry["throughput"] = measured.pop(1, {})
        if measured:
            entry["throughput_by_factor"] = {str(f): tp for f, tp in measured.items()}
    pipeline_sets = None if args.pipeline_sets is None else set(args.pipeline_sets.split(","))
    if not args.no_pipeline and (pipeline_sets is None or name in pipeline_sets):
        jobs = [int(j) for j in args.jobs.split(",")]
        runs = [(n, j) for n in map(int, args.nproc.split(",")) for j in (jobs if n == 1 else [0])]
        entry["pipeline"] = [
            measure_pipeline(
                data,
                dataset,
                args.work,
                quick=args.quick,
                limit=args.pipeline_limit,
                device=args.device,
                nproc=nproc,
                jobs=jobs,
            )
            for nproc, jobs in runs
        ]
    return entry


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT))
    args.work.mkdir(parents=True, exist_ok=True)
    sets = _data_sets(args)
    results: dict[str, Any] = {
        "command": "python -m bench.scale "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "conditions": conditions(),
        "sets": {},
    }
    previous = None
    if not args.fresh and args.out_json.is_file():
        previous = json.loads(args.out_json.read_text(encoding="utf-8"))
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    for name, data, dataset in sets:
        results["sets"][name] = measure_set(args, name, data, dataset)
        log.info("%s: %s", name, json.dumps(results["sets"][name]))
        # Written after every set: an interrupted run keeps the sets it finished.
        merged = merge(previous, results)
        args.out_json.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
        write_markdown(args.out_md, render(merged, args.marker), args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
