"""bench/install.py: make install's pip commands with and without byte-compilation, and
imports with and without bytecode written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import install

REPO = Path(__file__).resolve().parents[2]


def test_the_two_modes_differ_only_in_byte_compilation() -> None:
    python = Path("/venv/bin/python")
    compiled = install.pip_commands(python, extras="cpu,train", mode="compile")
    skipped = install.pip_commands(python, extras="cpu,train", mode="no-compile")
    assert [c for c in skipped[0] if c != "--no-compile"] == compiled[0]
    assert [c for c in skipped[1] if c != "--no-compile"] == compiled[1]
    assert all("--no-compile" in cmd for cmd in skipped)
    assert not any("--no-compile" in cmd for cmd in compiled)
    # torch pinned and first, as make install runs them: a later unpinned resolve would
    # otherwise pull a CUDA build.
    assert compiled[0][-1] == "torch==2.13.0"
    assert compiled[1][-2:] == ["-e", ".[cpu,train]"]


def test_the_no_compile_mode_is_what_make_install_runs() -> None:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^PIP_INSTALL := (.+)$", makefile, re.MULTILINE)
    assert match, "the Makefile defines no PIP_INSTALL"
    make_flags = set(match.group(1).split()) - {"$(PY)", "-m", "pip", "install"}
    (torch_cmd, _) = install.pip_commands(Path("py"), extras="x", mode="no-compile")
    assert make_flags == set(torch_cmd[4:-1])
    assert "$(PIP_INSTALL) torch==2.13.0" in makefile
    assert "$(PIP_INSTALL) -e '.[$(EXTRAS)]'" in makefile


def test_summary_takes_each_modes_median() -> None:
    def run(mode: str, torch_s: float) -> dict[str, float | str]:
        return {
            "mode": mode,
            "torch_s": torch_s,
            "project_s": 1.0,
            "first_import_s": 2.0,
            "second_import_s": 0.5,
            "total_s": torch_s + 3.0,
        }

    runs = [run("compile", 30.0), run("no-compile", 20.0), run("compile", 28.0)]
    out = install.summary(runs)
    assert out["compile"]["torch_s"] == pytest.approx(29.0)
    assert out["compile"]["total_s"] == pytest.approx(32.0)
    assert out["no-compile"]["torch_s"] == pytest.approx(20.0)


def test_only_the_no_bytecode_mode_keeps_python_from_writing_bytecode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert "PYTHONDONTWRITEBYTECODE" not in install.import_env("no-compile")
    assert "PYTHONDONTWRITEBYTECODE" not in install.import_env("compile")
    assert install.import_env("no-bytecode")["PYTHONDONTWRITEBYTECODE"] == "1"
    # The no-bytecode mode installs as no-compile does: only the imports differ.
    py = Path("py")
    assert install.pip_commands(py, extras="x", mode="no-bytecode") == install.pip_commands(
        py, extras="x", mode="no-compile"
    )


def test_make_lets_python_write_bytecode_as_the_no_compile_mode_does() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^unexport PYTHONDONTWRITEBYTECODE$", makefile, re.MULTILINE)
