"""bench/scale.py's measurement of a run: its whole process tree's memory, its limit, and a
pipeline that starts from nothing."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import scale
from bench.scale import merge, render, run_measured
from training.synth import SynthConfig, generate
from training.train import TeacherConfig

# A parent holding ~60 MB that starts a child holding ~300 MB, as torchrun starts workers;
# the child lives for a few of the benchmark's memory readings (SAMPLE_S).
_TREE = """
import subprocess, sys, time
held = bytearray(60 * 2**20)
child = "import time; held = bytearray(300 * 2**20); time.sleep(1.5)"
subprocess.run([sys.executable, "-c", child], check=True)
"""


def test_memory_covers_the_children_of_the_run(tmp_path: Path) -> None:
    out = run_measured([sys.executable, "-c", _TREE], limit=60, log_path=tmp_path / "log")
    assert out["returncode"] == 0 and not out["timed_out"]
    # The parent alone never reaches 300 MB: the peak is the child's own.
    assert out["peak_rss_gb"] >= 0.3
    # Parent and child were resident at the same time.
    assert out["peak_tree_rss_gb"] >= out["peak_rss_gb"] + 0.05


def test_a_process_shorter_than_the_sampling_interval_keeps_its_peak(tmp_path: Path) -> None:
    # Allocates 200 MB and exits within a few tenths of a second: less than SAMPLE_S, the
    # descendant scan's interval (a data set's load is such a process).
    script = "import time; held = bytearray(200 * 2**20); time.sleep(0.2)"
    out = run_measured([sys.executable, "-c", script], limit=60, log_path=tmp_path / "log")
    assert out["returncode"] == 0
    assert out["peak_rss_gb"] >= 0.2


def test_a_run_past_its_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.perf_counter()
    out = run_measured([sys.executable, "-c", script], limit=2, log_path=tmp_path / "log")
    assert out["timed_out"] and out["returncode"] != 0
    assert time.perf_counter() - started < 30
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the run's child outlived the limit"
        time.sleep(0.05)


def _conditions(when: str) -> dict[str, object]:
    return {"cpus": 2, "load_average_1m": 0.5, "torch": "2.13.0+cpu", "when": when}


def _pipeline(nproc: int, seconds: float) -> dict[str, object]:
    return {
        "seconds": seconds,
        "peak_rss_gb": 1.0,
        "returncode": 0,
        "timed_out": False,
        "steps": {"teacher": seconds / 2},
        "quick": False,
        "nproc": nproc,
    }


def _run(when: str, sets: dict[str, object]) -> dict[str, object]:
    return {"command": f"python -m bench.scale # {when}", "conditions": _conditions(when),
            "sets": sets}  # fmt: skip


def _entry(load_s: float, *pipelines: dict[str, object]) -> dict[str, object]:
    entry: dict[str, object] = {"load": {"load_seconds": load_s, "peak_rss_gb": 0.2}}
    entry["throughput"] = {"mf": {"ratings_per_s": 1000.0}}
    if pipelines:
        entry["pipeline"] = list(pipelines)
    return entry


def test_a_run_replaces_only_what_it_measured() -> None:
    first = _run("t1", {
        "ml1m": _entry(0.3, _pipeline(1, 1600.0), _pipeline(2, 2000.0)),
        "cat1m": _entry(7.9),
    })  # fmt: skip
    # The format before merging: one run, no run numbers.
    second = _run("t2", {"ml1m": _entry(0.2, _pipeline(1, 1300.0))})
    merged = merge(first, second)
    assert [r["conditions"]["when"] for r in merged["runs"]] == ["t1", "t2"]
    ml1m = merged["sets"]["ml1m"]
    assert ml1m["run"] == 2 and ml1m["load"]["load_seconds"] == 0.2
    rows = {p["nproc"]: (p["seconds"], p["run"]) for p in ml1m["pipeline"]}
    assert rows == {1: (1300.0, 2), 2: (2000.0, 1)}
    assert merged["sets"]["cat1m"]["run"] == 1
    text = render(merged)
    assert "| ml1m | full | 1 (1 for the components) | 1300 |" in text
    assert text.count("`python -m bench.scale # t") == 2


def test_pipeline_rows_of_other_component_processes_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []

    def measured(cmd: list[str], *, limit: float, log_path: Path) -> dict[str, object]:
        commands.append(cmd)
        log_path.write_text("", encoding="utf-8")
        return {"seconds": 1.0, "returncode": 0}

    monkeypatch.setattr(scale, "run_measured", measured)
    rows = [
        {**scale.measure_pipeline(tmp_path / "data", "ml-latest", tmp_path, quick=True,
                                  limit=10.0, device="cpu", nproc=1, jobs=jobs),
         "peak_rss_gb": 1.0, "timed_out": False}
        for jobs in (0, 3)
    ]  # fmt: skip
    assert [c[c.index("--jobs") + 1] for c in commands] == ["0", "3"]
    assert [r["component_jobs"] for r in rows] == [1, 3]  # --quick's auto: in turn
    first = merge(None, _run("t1", {"ml1m": _entry(0.3, rows[0])}))
    both = merge(first, _run("t2", {"ml1m": _entry(0.3, rows[1])}))
    assert sorted(p["component_jobs"] for p in both["sets"]["ml1m"]["pipeline"]) == [1, 3]
    text = render(both)
    assert "1 (1 for the components)" in text and "1 (3 for the components)" in text


def test_runs_no_row_cites_are_dropped_and_renumbered() -> None:
    first = merge(None, _run("t1", {"ml1m": _entry(0.3, _pipeline(1, 1600.0))}))
    second = merge(first, _run("t2", {"cat1m": _entry(7.9)}))
    third = merge(second, _run("t3", {"ml1m": _entry(0.2, _pipeline(1, 1300.0))}))
    assert [r["conditions"]["when"] for r in third["runs"]] == ["t2", "t3"]
    assert third["sets"]["cat1m"]["run"] == 1
    assert third["sets"]["ml1m"]["run"] == 2
    assert third["sets"]["ml1m"]["pipeline"][0]["run"] == 2
    # The earlier results are left as they were.
    assert second["sets"]["ml1m"]["run"] == 1 and len(second["runs"]) == 2


def test_a_pipeline_run_never_resumes_an_earlier_runs_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier run of the same code left its checkpoints: the pipeline would resume from
    # them and the benchmark would time their reloading.
    stale = tmp_path / "run-data-1p" / ".work" / "key"
    stale.mkdir(parents=True)
    (stale / "teacher.pt").write_bytes(b"old")
    seen: list[bool] = []

    def measured(cmd: list[str], *, limit: float, log_path: Path) -> dict[str, object]:
        seen.append(stale.exists())
        log_path.write_text("", encoding="utf-8")
        return {"seconds": 1.0, "returncode": 0}

    monkeypatch.setattr(scale, "run_measured", measured)
    data = tmp_path / "data"
    scale.measure_pipeline(
        data, "ml-latest", tmp_path, quick=False, limit=10.0, device="cpu", nproc=1
    )
    assert seen == [False]


def test_each_run_names_its_cpu_where_it_recorded_one() -> None:
    now = scale.conditions()
    assert now["cpu_capability"] and now["cpu_model"]
    old = _run("t1", {"ml1m": _entry(1.0)})
    new = {**_run("t2", {"cat50k": _entry(2.0)}), "conditions": {**_conditions("t2"), **now}}
    lines = render(merge(merge(None, old), new)).splitlines()
    first, second = (next(line for line in lines if line.startswith(f"{n}. ")) for n in (1, 2))
    assert "torch kernels" not in first  # recorded before the CPU was
    assert f"({now['cpu_model']}, torch kernels {now['cpu_capability']})" in second


def test_a_pipeline_only_run_keeps_the_sets_load_and_throughput() -> None:
    first = merge(None, _run("t1", {"ml10m": _entry(1.5, _pipeline(1, 600.0))}))
    pipeline_only = _run("t2", {"ml10m": {"pipeline": [_pipeline(1, 264.0)]}})
    merged = merge(first, pipeline_only)
    ml10m = merged["sets"]["ml10m"]
    assert ml10m["load"]["load_seconds"] == 1.5 and ml10m["run"] == 1
    assert [(p["seconds"], p["run"]) for p in ml10m["pipeline"]] == [(264.0, 2)]
    # A set seen first in a pipeline-only run is cited by that run.
    fresh = merge(None, pipeline_only)["sets"]["ml10m"]
    assert fresh["run"] == 1 and "| ml10m | nan | nan | - | - | - | 1 |" in render(
        merge(None, pipeline_only)
    )


def test_larger_batches_get_rows_of_their_own_in_the_named_section(tmp_path: Path) -> None:
    entry = _entry(0.5)
    entry["throughput_by_factor"] = {"8": {"mf": {"ratings_per_s": 7000.0}}}
    text = render(merge(None, _run("t1", {"ml1m": entry})), "bench.scale-gpu")
    assert text.startswith("<!-- bench.scale-gpu:begin -->")
    assert text.endswith("<!-- bench.scale-gpu:end -->")
    rows = [line for line in text.splitlines() if line.startswith("| ml1m")]
    assert rows == [
        "| ml1m | 0.5 | 0.20 | 1000 | - | - | 1 |",
        "| ml1m, batch x8 | - | - | 7000 | - | - | 1 |",
    ]
    doc = tmp_path / "SCALE.md"
    doc.write_text("# Scale\n\n<!-- bench.scale:begin -->\ncpu\n<!-- bench.scale:end -->\n")
    scale.write_markdown(doc, text, "bench.scale-gpu")
    written = doc.read_text()
    # The CPU section stays; the GPU one is added beside it.
    assert "<!-- bench.scale:begin -->\ncpu\n<!-- bench.scale:end -->" in written
    assert "| ml1m, batch x8 |" in written


def test_throughput_at_a_batch_factor_trains_that_many_rows_per_step(tmp_path: Path) -> None:
    generate(SynthConfig(60, 80, 2000, seed=0), tmp_path / "d")
    out = scale.measure_throughput(
        tmp_path / "d", "ml-latest", quick=True, batches=2, device="cpu", factor=2
    )
    quick_batch = {c: getattr(TeacherConfig().quick(), c).batch_size for c in scale.COMPONENTS}
    for name in scale.COMPONENTS:
        assert out[name]["batch_size"] == 2 * quick_batch[name]
        assert out[name]["ratings_per_s"] > 0


def test_the_runs_see_the_tree_before_the_callers_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/carried/site")
    code = "import os; print(os.environ['PYTHONPATH'])"
    run_measured([sys.executable, "-c", code], limit=60, log_path=tmp_path / "log")
    assert (tmp_path / "log").read_text().strip() == f"{scale.ROOT}{os.pathsep}/carried/site"
