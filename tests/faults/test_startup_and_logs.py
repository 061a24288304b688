"""What an operator reads, through serve.sh: a failed start is one JSON line naming the fix
(never a traceback), and a running server logs JSON only, one access line per request."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.faults.served import serve_env, serving, start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text and "\x1b[" not in text, text[-3000:]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return parsed


def _failed_start(env: dict[str, str], log_path: Path) -> list[dict[str, object]]:
    served = start(env, log_path)
    served.process.wait(timeout=60)
    assert served.process.returncode != 0
    return _json_lines(served.log())


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"MODEL_DIR": "EMPTY"}, ["no model bundle at MODEL_DIR=", "make bundle"]),
        ({"MODEL_DIR": "MISSING"}, ["does not exist", "python -m training pipeline"]),
        ({"AB_STUDENT_PERCENT": "150"}, ["AB_STUDENT_PERCENT=150:", "less than or equal to 100"]),
        ({"INFERENCE_CONCURRENCY": "zero"}, ["INFERENCE_CONCURRENCY=zero:"]),
    ],
)
def test_a_failed_start_is_one_line(
    bundle_dir: Path, tmp_path: Path, setting: dict[str, str], expected: list[str]
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing")}
    overrides = {k: paths.get(v, v) for k, v in setting.items()}
    entries = _failed_start(serve_env(bundle_dir, **overrides), tmp_path / "server.log")
    errors = [e for e in entries if e["level"] == "ERROR"]
    reason = [e for e in errors if all(text in str(e["msg"]) for text in expected)]
    assert len(reason) == 1, errors
    assert "\n" not in str(reason[0]["msg"]) and "exc" not in reason[0]


def test_running_server_logs_json_once_per_request(bundle_dir: Path, tmp_path: Path) -> None:
    env = serve_env(bundle_dir, ACCESS_LOG="true", LOG_LEVEL="INFO")
    with serving(env, tmp_path / "server.log") as server:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for n in range(3):
                client.get("/healthz", headers={"X-Request-ID": f"req-{n}"})
            client.get("/no-such-path", headers={"X-Request-ID": "req-404"})
        server.stop()
        entries = _json_lines(server.log())
    # JSON from uvicorn's very first line, not only after the lifespan configured logging.
    assert str(entries[0]["msg"]).startswith("Started server process"), entries[0]
    assert not any("color_message" in e for e in entries)
    access = [
        str(e["request_id"])
        for e in entries
        if e["logger"] == "app.access" and str(e.get("request_id")).startswith("req-")
    ]
    assert sorted(access) == ["req-0", "req-1", "req-2", "req-404"]
    assert not any(e["logger"] == "uvicorn.access" for e in entries)
