"""`python -m training`: help for every command, user errors as a message and exit 2."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.__main__ import EXIT_USER_ERROR, build_parser, main, show_progress
from training.data import default_split

COMMANDS = (
    "pipeline", "train-teacher", "distill", "export", "evaluate", "report", "verify", "synth",
)  # fmt: skip
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
    if command == "synth":
        for option in ("--users", "--items", "--ratings", "--seed", "--out"):
            assert option in out
    elif command != "verify":
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
        ["pipeline", "--seed", "-1"],
        ["pipeline", "--ann-min-items", "-5"],
        ["pipeline", "--seed", str(2**32)],
        ["synth", "--users", "3", "--items", "3", "--ratings", "3", "--out", "x", "--seed", "-1"],
        ["pipeline", "--threads", str(10**20)],
        ["pipeline", "--out-dir", ""],
        ["synth", "--users", "3", "--items", "3", "--ratings", "3", "--out", " "],
        ["nonsense"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--prune-ratio must lie in [0, 1)" in err
    assert "--seed: -1 is below 0" in err and "4294967296 is above 4294967295" in err
    assert f"--threads: {10**20} is above 4096" in err
    assert "--out-dir: an empty path" in err and "--out: an empty path" in err


def test_synth_sizes_beyond_any_machine_are_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["synth", "--users", str(10**12), "--items", "10", "--ratings", "1"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert "at most 100,000,000 users or items" in capsys.readouterr().err


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


def test_default_split_is_valid_for_every_dataset() -> None:
    args = build_parser().parse_args(["pipeline"])
    assert args.split == "auto"
    assert default_split("ml-100k") == "u1"
    for dataset in ("ml-1m", "ml-latest", "ml-latest-small", "csv"):
        assert default_split(dataset) == "random"


def _one_line_error(argv: list[str], cwd: Path) -> str:
    """Runs the command line in a real process; returns its one error line."""
    result = subprocess.run(
        [sys.executable, "-m", "training", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        timeout=180,
        check=False,
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert errors == [lines[-1]], result.stderr  # one error line, and it is the last
    return lines[-1]


def test_user_errors_are_one_line_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    one = tmp_path / "one.csv"
    one.write_text("userId,movieId,rating\n1,10,4\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("userId,movieId,rating\n1,10,4\n2,10,lots\n")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("uid,movieId,rating\n1,10,4\n")
    common = ["--dataset", "csv", "--quick", "--no-progress", "--out-dir", str(tmp_path / "m")]
    cases = {
        # no --split: the default for csv is random, and one rating cannot be split
        "too few for split random": ["pipeline", "--data-dir", str(one), *common],
        "bad.csv:3: rating 'lots' is not a number": ["pipeline", "--data-dir", str(bad), *common],
        "unknown.csv:1: unknown column 'uid'": ["pipeline", "--data-dir", str(unknown), *common],
        "afile is a file, not a folder": [
            "pipeline", "--data-dir", str(one), "--out-dir", str(tmp_path / "afile" / "m"),
        ],
        "the csv dataset needs --data-dir": ["train-teacher", "--dataset", "csv"],
        "invalid choice: 'u9'": ["pipeline", "--split", "u9"],
    }  # fmt: skip
    for expected, argv in cases.items():
        assert expected in _one_line_error(argv, tmp_path), argv


def test_too_little_data_for_the_teacher_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("user,item,rating\na,m1,4\nb,m1,3\na,m2,5\n")
    argv = ["train-teacher", "--dataset", "csv", "--data-dir", str(tiny), "--quick"]
    code = main([*argv, "--no-progress", "--out-dir", str(tmp_path / "m")])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "use more data" in err[-1]


@pytest.mark.parametrize(
    ("flags", "tty", "expected"),
    [
        ([], False, False),
        ([], True, True),
        (["--progress"], False, True),
        (["--no-progress"], True, False),
    ],
)
def test_progress_bars_only_on_a_terminal_unless_asked(
    flags: list[str], tty: bool, expected: bool
) -> None:
    args = build_parser().parse_args(["pipeline", "--dataset", "ml-100k", *flags])
    stream = io.StringIO()
    stream.isatty = lambda: tty  # type: ignore[method-assign]
    assert show_progress(args.progress, stream) is expected
