"""How long `make install`'s two pip commands take in a fresh virtual environment, with and
without pip byte-compiling every module it installs (`--no-compile`).

    python -m bench.install [--extras cpu,train] [--pairs 2] [--out FILE]

Each pair builds one fresh venv per mode, the two modes in turns, and times what `make
install` runs (torch pinned first, then this project with `--extras`; `cpu,train` is what
`make run` installs) and then the first import of what the pipeline and the service load,
where compiling the modules skipped at installation is paid instead. pip's cache is
whatever this machine holds, the same for both modes. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
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
MODES = ("compile", "no-compile")
TORCH = "torch==2.13.0"
# What `python -m training pipeline` and the service import first.
FIRST_IMPORT = "import torch, onnxruntime, fastapi, uvicorn, training.pipeline, app.main"


def pip_commands(python: Path, *, extras: str, mode: str) -> list[list[str]]:
    """make install's two pip commands for one mode."""
    flags = ["--quiet", "--disable-pip-version-check"]
    if mode == "no-compile":
        flags.append("--no-compile")
    install = [str(python), "-m", "pip", "install", *flags]
    return [[*install, TORCH], [*install, "-e", f".[{extras}]"]]


def _timed(cmd: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(mode: str, *, extras: str, work: Path) -> dict[str, Any]:
    """One fresh venv: seconds of each pip command and of the first import."""
    venv = work / mode
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    torch_s, project_s = (_timed(cmd) for cmd in pip_commands(python, extras=extras, mode=mode))
    import_s = _timed([str(python), "-c", FIRST_IMPORT])
    result = {
        "mode": mode,
        "torch_s": torch_s,
        "project_s": project_s,
        "first_import_s": import_s,
        "total_s": torch_s + project_s + import_s,
    }
    log.info("%s", result)
    return result


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median of each timing per mode."""
    keys = ("torch_s", "project_s", "first_import_s", "total_s")
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
