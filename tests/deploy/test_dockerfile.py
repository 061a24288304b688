"""The Dockerfile's three targets against the code they package."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from fastapi import FastAPI
from packaging.requirements import Requirement

from tests.deploy.conftest import APP_PORT, DEPLOY, REPO, shell_variables
from tests.deploy.dockerfile import Dockerfile, Stage, read_dockerfile
from training.__main__ import build_parser

SERVE_SCRIPT = DEPLOY / "docker" / "serve.sh"
TRAIN_SCRIPT = DEPLOY / "docker" / "train-if-missing.sh"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _user(stage: Stage, dockerfile: Dockerfile) -> str:
    users = stage.all("USER")
    assert users, f"stage {stage.name} runs as root"
    uid = dockerfile.resolve(users[-1]).split(":")[0]
    return uid


def _copies(stage: Stage, *, from_context: bool = True) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY; by default only those from the build context."""
    found = []
    for args in stage.all("COPY"):
        tokens = shlex.split(args)
        if from_context and any(t.startswith("--from") for t in tokens):
            continue
        parts = [p for p in tokens if not p.startswith("--")]
        found.append((parts[:-1], parts[-1]))
    return found


def _cmd(stage: Stage) -> list[str]:
    return json.loads(stage.all("CMD")[-1])


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    parts = Path(path).parts
    # A pattern matching a parent directory excludes everything below it.
    candidates = [str(Path(*parts[:n])) for n in range(1, len(parts) + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        if any(
            fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
            for c in candidates
        ):
            ignored = not negate
    return ignored


def test_stages_exist(dockerfile: Dockerfile) -> None:
    assert {"serve", "serve-gpu", "train"} <= set(dockerfile.stages)


def test_serving_image_is_slim_python_without_torch(dockerfile: Dockerfile) -> None:
    chain = dockerfile.chain("serve") + dockerfile.chain("serve-build")
    root = dockerfile.resolve(chain[-1].base)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", root), root
    text = " ".join(i.args for stage in chain for i in stage.instructions)
    assert "torch" not in text
    assert "training" not in text, "the serving image must not carry the training package"
    installs = [a for s in chain for a in s.all("RUN") if "pip install" in a]
    assert installs == ['pip install ".[cpu]"'], "serving installs the CPU ONNX Runtime extra only"


def test_serving_image_runs_serve_script_as_non_root(dockerfile: Dockerfile) -> None:
    for name in ("serve", "serve-gpu"):
        stage = dockerfile.stages[name]
        uid = _user(stage, dockerfile)
        assert uid.isdigit() and int(uid) != 0, f"{name} must run as a numeric non-root uid"
        assert f"{APP_PORT}" in stage.all("EXPOSE")
        dest = {d for sources, d in _copies(stage) if "deploy/docker/serve.sh" in sources}
        assert dest, f"{name} does not copy serve.sh"
        assert _cmd(stage) == ["sh", dest.pop()]
        healthcheck = stage.all("HEALTHCHECK")[-1]
        assert "/healthz" in healthcheck and "python" in healthcheck


def test_serve_script_starts_the_app_object(dockerfile: Dockerfile) -> None:
    text = SERVE_SCRIPT.read_text()
    match = re.search(r"exec uvicorn (\S+):(\S+)", text)
    assert match, "serve.sh must exec uvicorn"
    module, attribute = match.groups()
    # Importing builds the ASGI app without loading a bundle (app/main.py).
    imported = importlib.import_module(module)
    assert isinstance(getattr(imported, attribute), FastAPI)
    assert '"${PORT:-8000}"' in text and "PROMETHEUS_MULTIPROC_DIR" in text


def test_serving_env_names_are_settings(dockerfile: Dockerfile, serve_env_names: set[str]) -> None:
    for name in ("serve", "serve-gpu"):
        env = dockerfile.stages[name].env()
        runtime = {
            "PATH",
            "PYTHONDONTWRITEBYTECODE",
            "PYTHONUNBUFFERED",
            "PIP_NO_CACHE_DIR",
            "PIP_DISABLE_PIP_VERSION_CHECK",
            "DEBIAN_FRONTEND",
        }
        unknown = set(env) - serve_env_names - runtime
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
        assert env["MODEL_DIR"] == "/models/current"
        assert env["PORT"] == str(APP_PORT)


def test_gpu_image_uses_cuda_runtime_with_onnxruntime_gpu(dockerfile: Dockerfile) -> None:
    stage = dockerfile.stages["serve-gpu"]
    base = dockerfile.resolve(stage.base)
    assert base.startswith("nvidia/cuda:") and "cudnn" in base and "runtime" in base, base
    run = " ".join(stage.all("RUN"))
    # The `gpu` extra alone: onnxruntime-gpu is the only wheel with the onnxruntime module
    # (tests/deploy/test_packaging.py resolves what each extra installs).
    installs = [a for a in stage.all("RUN") if "pip install" in a]
    assert len(installs) == 1 and installs[0].startswith('pip install ".[gpu]"'), installs
    assert "[cpu" not in run and "CUDAExecutionProvider" in run
    assert stage.env()["ORT_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"


def test_training_image_pins_the_cpu_torch_the_train_extra_admits(
    dockerfile: Dockerfile, pyproject: dict
) -> None:
    stage = dockerfile.stages["train"]
    run = " ".join(stage.all("RUN"))
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu"
    assert f'pip install "torch==${{TORCH_VERSION}}" {cpu_index}' in run
    assert 'pip install ".[cpu,train]"' in run
    version = dockerfile.global_args["TORCH_VERSION"]
    torch_req = next(
        Requirement(r)
        for r in pyproject["project"]["optional-dependencies"]["train"]
        if Requirement(r).name == "torch"
    )
    assert version in torch_req.specifier, f"torch {version} outside {torch_req}"
    assert int(_user(stage, dockerfile)) != 0
    dest = {d for sources, d in _copies(stage) if "deploy/docker/train-if-missing.sh" in sources}
    assert _cmd(stage) == ["sh", dest.pop()]
    unknown = set(stage.env()) - shell_variables(TRAIN_SCRIPT)
    assert not unknown, f"train image sets variables the script does not read: {unknown}"


def test_all_images_share_one_uid(dockerfile: Dockerfile) -> None:
    uids = {_user(dockerfile.stages[n], dockerfile) for n in ("serve", "serve-gpu", "train")}
    assert len(uids) == 1, "a bundle written by `train` must be readable by `serve`"


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in dockerfile.stages.values():
        for sources, _ in _copies(stage):
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source} (stage {stage.name}) is missing"
                assert not _dockerignored(source, patterns), f"{source} is .dockerignored"
    for private in ("models", ".git", "tests", "data/ml-100k/u.data"):
        assert _dockerignored(private, patterns), f"{private} would enter the build context"


def test_train_script_skips_an_existing_bundle(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "manifest.json").write_text("{}")
    (tmp_path / "current").symlink_to("v1")
    done = subprocess.run(
        ["sh", str(TRAIN_SCRIPT)],
        env={**os.environ, "OUT_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout


@pytest.mark.parametrize("with_data", [True, False])
def test_train_script_passes_pipeline_arguments(tmp_path: Path, with_data: bool) -> None:
    # A stand-in `python` on PATH records the command line the script would run.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    (bin_dir / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    (bin_dir / "python").chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    if with_data:
        (data / "u.data").write_text("1\t1\t5\t881250949\n")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OUT_DIR": str(tmp_path / "m"),
        "DATA_DIR": str(data),
        "TRAIN_EXTRA_ARGS": "--quick",
    }
    done = subprocess.run(
        ["sh", str(TRAIN_SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    argv = record.read_text().split()
    assert argv[:3] == ["-m", "training", "pipeline"]
    # The real training CLI accepts exactly this command line.
    args = build_parser().parse_args(argv[2:])
    assert args.command == "pipeline" and args.split == "none" and args.quick
    assert ("--data-dir" in argv) is with_data
    assert argv[argv.index("--out-dir") + 1] == str(tmp_path / "m")
    assert argv[argv.index("--split") + 1] == "none" and argv[-1] == "--quick"
