"""`python -m training`: help for every command, user errors as a message and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.__main__ import EXIT_USER_ERROR, build_parser, main

COMMANDS = ("pipeline", "train-teacher", "distill", "export", "evaluate", "report", "verify")
REPO = Path(__file__).resolve().parents[2]


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: python -m training {command}" in out
    if command != "verify":
        for option in (
            "--data-dir",
            "--dataset",
            "--split",
            "--out-dir",
            "--quick",
            "--seed",
            "--threads",
            "--prune-ratio",
        ):
            assert option in out


def test_pipeline_defaults_match_the_make_target() -> None:
    args = build_parser().parse_args(["pipeline", "--split", "none"])
    assert args.data_dir is None  # downloads the archive
    assert args.dataset == "ml-100k" and args.out_dir == Path("models") and not args.quick


def test_missing_data_dir_exits_2_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    code = main(["pipeline", "--data-dir", str(missing), "--out-dir", str(tmp_path / "m")])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err
    assert not (tmp_path / "m" / "current").exists()


def test_malformed_ratings_exit_2_naming_file_and_line(
    synthetic_ml100k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_ml100k, data)
    lines = (data / "u.data").read_text().splitlines()
    fields = lines[4].split("\t")
    fields[2] = "five"
    lines[4] = "\t".join(fields)
    (data / "u.data").write_text("\n".join(lines) + "\n")
    code = main(
        [
            "train-teacher",
            "--data-dir",
            str(data),
            "--out-dir",
            str(tmp_path / "m"),
            "--quick",
            "--no-progress",
        ]
    )
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "u.data:5:" in err and "'five' is not a number" in err


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["pipeline", "--prune-ratio", "1.5"],
        ["pipeline", "--dataset", "netflix"],
        ["pipeline", "--split", "u9"],
        ["nonsense"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "--prune-ratio must lie in [0, 1)" in capsys.readouterr().err


def test_verify_good_and_tampered_bundle(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(bundle_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == bundle_dir.name
    assert {"teacher", "student"} <= set(summary["models"])

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "items.json").write_text("[]")
    assert main(["verify", str(copy)]) == EXIT_USER_ERROR
    assert "items.json: sha256" in capsys.readouterr().err


def test_real_process_reports_data_error_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "pipeline",
            "--data-dir",
            str(tmp_path / "none"),
            "--out-dir",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_USER_ERROR
    assert "error:" in result.stderr and "no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_step_commands_share_checkpoints_then_publish(
    synthetic_ml100k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--data-dir",
        str(synthetic_ml100k),
        "--out-dir",
        str(tmp_path / "m"),
        "--quick",
        "--no-progress",
        "--split",
        "u2",
    ]
    assert main(["distill", *common]) == 0
    work = Path(capsys.readouterr().out.strip())
    assert (work / "teacher.pt").is_file() and (work / "student.pt").is_file()
    assert main(["evaluate", *common]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["eval_on"] == "test"
    assert set(evaluation["models"]) == {"teacher", "student", "student_int8"}
    assert main(["pipeline", *common]) == 0
    bundle = Path(capsys.readouterr().out.strip())
    assert (tmp_path / "m" / "current").resolve() == bundle.resolve()
    assert main(["verify", str(tmp_path / "m" / "current")]) == 0
