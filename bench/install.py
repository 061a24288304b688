"""How long `make install`'s two pip commands take in a fresh virtual environment, with and
without pip byte-compiling every module it installs (`--no-compile`), and how long the
processes of a command take to import their modules after it, with and without Python
writing their bytecode.

    python -m bench.install [--extras cpu,train] [--pairs 2] [--out FILE]

Each pair builds one fresh venv per mode, the two modes in turns, and times what `make
install` runs (torch pinned first, then this project with `--extras`; `cpu,train` is what
`make run` installs) and then the first import of what the pipeline and the service load,
where compiling the modules skipped at installation is paid instead, and the same import
in a second process, as each component worker of the pipeline does. Mode `no-bytecode` is
`no-compile` where the environment sets PYTHONDONTWRITEBYTECODE (as make did before it
unexported it): no process writes what it compiled, so the second compiles again. pip's
cache is whatever this machine holds, the same for every mode. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.install")

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "contract", "training")
MODES = ("compile", "no-compile", "no-bytecode")
TORCH = "torch==2.13.0"
# What `python -m training pipeline` and the service import first (torch._dynamo: what
# torch.optim's first step imports in every training process).
FIRST_IMPORT = (
    "import torch, torch._dynamo, onnxruntime, fastapi, uvicorn, training.pipeline, app.main"
)


def pip_commands(python: Path, *, extras: str, mode: str) -> list[list[str]]:
    """make install's two pip commands for one mode."""
    flags = ["--quiet", "--disable-pip-version-check"]
    if mode != "compile":
        flags.append("--no-compile")
    install = [str(python), "-m", "pip", "install", *flags]
    return [[*install, TORCH], [*install, "-e", f".[{extras}]"]]


def import_env(mode: str) -> dict[str, str]:
    """The environment of the imports: bytecode written but in mode `no-bytecode`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if mode == "no-bytecode":
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _timed(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def measure(mode: str, *, extras: str, work: Path) -> dict[str, Any]:
    """One fresh venv: seconds of each pip command and of the first import."""
    venv = work / mode
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    torch_s, project_s = (_timed(cmd) for cmd in pip_commands(python, extras=extras, mode=mode))
    env = import_env(mode)
    for package in PACKAGES:  # the project's own bytecode, from an earlier mode's imports
        for cache in (REPO / package).rglob("__pycache__"):
            shutil.rmtree(cache)
    import_s, second_s = (_timed([str(python), "-c", FIRST_IMPORT], env) for _ in range(2))
    result = {
        "mode": mode,
        "torch_s": torch_s,
        "project_s": project_s,
        "first_import_s": import_s,
        "second_import_s": second_s,
        "total_s": torch_s + project_s + import_s,
    }
    log.info("%s", result)
    return result


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median of each timing per mode."""
    keys = ("torch_s", "project_s", "first_import_s", "second_import_s", "total_s")
    return {
        mode: {k: statistics.median(r[k] for r in runs if r["mode"] == mode) for k in keys}
        for mode in MODES
        if any(r["mode"] == mode for r in runs)
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="cpu,train", help="the project's extras")
    parser.add_argument("--pairs", type=int, default=2, help="venvs per mode, in turns")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/install-compile.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    runs = []
    for _ in range(args.pairs):
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix="bench-install-") as work:
                runs.append(measure(mode, extras=args.extras, work=Path(work)))
    out = {"extras": args.extras, "runs": runs, "median": summary(runs)}
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    log.info("medians: %s (written to %s)", out["median"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
