"""What each install path of the README puts into an environment, resolved by pip itself.

`pip install --dry-run --report` on this project, offline: every distribution pip asks for
is a stub wheel carrying the real metadata (version, Requires-Dist, extras) of the one in
this environment, or an empty stub for those not installed here (onnxruntime-gpu). So the
resolution follows the real dependency graph, transitive dependencies included, and shows
whether the GPU path brings the CPU onnxruntime back.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import REPO

pytestmark = pytest.mark.timeout(300)


def _stub_wheel(directory: Path, name: str, requirement: Requirement | None) -> None:
    try:
        dist = metadata.distribution(name)
        version = dist.version
        lines = [f"Requires-Dist: {r}" for r in dist.requires or []]
        lines += [f"Provides-Extra: {e}" for e in dist.metadata.get_all("Provides-Extra") or []]
    except metadata.PackageNotFoundError:
        specifier = requirement.specifier if requirement else []
        floor = [s.version for s in specifier if ">" in s.operator]
        version, lines = (floor[0] if floor else "1.0"), []
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    with zipfile.ZipFile(directory / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(
            f"{info}/METADATA",
            "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *lines])
            + "\n",
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")


def _stub_index(directory: Path, roots: list[Requirement]) -> None:
    """Stubs for the transitive closure of `roots` (all extras followed, markers ignored:
    a superset is harmless, pip picks what applies)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        _stub_wheel(directory, requirement.name, requirement)
        with contextlib.suppress(metadata.PackageNotFoundError):
            todo += [Requirement(r) for r in metadata.requires(requirement.name) or []]


def _project_copy(target: Path) -> None:
    """pyproject.toml, README.md and empty packages: enough to build the metadata."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, target / name)
    for package in ("app", "training"):
        (target / package).mkdir()
        (target / package / "__init__.py").write_text("")
    (target / "app" / "log_config.json").write_text("{}")


Resolver = Callable[[str], set[str]]


@pytest.fixture(scope="module")
def resolve(tmp_path_factory: pytest.TempPathFactory) -> Resolver:
    """extras -> the distribution names `pip install '.[extras]'` would install."""
    root = tmp_path_factory.mktemp("packaging")
    project = root / "project"
    project.mkdir()
    _project_copy(project)
    stubs = root / "stubs"
    stubs.mkdir()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in pyproject["dependencies"]]
    for extra in pyproject["optional-dependencies"].values():
        roots += [Requirement(r) for r in extra]
    _stub_index(stubs, roots)

    def installed(extras: str) -> set[str]:
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
            "--ignore-installed", "--no-index", "--find-links", str(stubs),
            "--no-build-isolation", f".[{extras}]",
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=project, capture_output=True, text=True, timeout=240, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        return {canonicalize_name(i["metadata"]["name"]) for i in report["install"]}

    return installed


def _readme_gpu_extras() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("GPU:", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"EXTRAS=([\w,]+)", section) + re.findall(r"'\.\[([\w,]+)\]'", section)
    assert found, "the README's GPU instructions name no extras"
    return found


def _makefile_extras(variable: str = "EXTRAS") -> str:
    pattern = rf"^{variable} \?= ([\w,]+)$"
    match = re.search(pattern, (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def test_readme_gpu_install_has_only_onnxruntime_gpu(resolve: Resolver) -> None:
    for extras in _readme_gpu_extras():
        names = resolve(extras)
        assert "onnxruntime-gpu" in names, (extras, sorted(names))
        assert "onnxruntime" not in names, f"'.[{extras}]' brings the CPU onnxruntime back"


def test_default_install_has_only_the_cpu_onnxruntime(resolve: Resolver) -> None:
    names = resolve(_makefile_extras())
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert {"fastapi", "uvicorn", "redis", "torch"} <= names


def test_make_run_installs_what_it_trains_and_serves_with_and_no_test_tools(
    resolve: Resolver,
) -> None:
    names = resolve(_makefile_extras("RUN_EXTRAS"))
    assert {"onnxruntime", "fastapi", "uvicorn", "redis", "torch", "onnx", "pyarrow"} <= names
    assert not names & {"onnxruntime-gpu", "pytest", "mypy", "ruff", "schemathesis"}
