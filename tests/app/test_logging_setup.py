"""JSON log lines with the request id."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.logging_setup import JsonFormatter, request_id_var
from tests.app.conftest import Reference


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_lines_are_json_with_request_id_and_extras() -> None:
    token = request_id_var.set("req-42")
    try:
        line = JsonFormatter().format(_record("hello %s", user="u1"))
    finally:
        request_id_var.reset(token)
    entry = json.loads(line)
    assert entry["msg"] == "hello %s"
    assert entry["request_id"] == "req-42"
    assert entry["user"] == "u1"
    assert entry["level"] == "INFO" and entry["ts"].endswith("Z")


def test_without_a_request_there_is_no_request_id() -> None:
    assert "request_id" not in json.loads(JsonFormatter().format(_record("start")))


def test_access_log_names_the_request(
    make_client: Callable[..., TestClient], reference: Reference, capfd: pytest.CaptureFixture[str]
) -> None:
    client = make_client(access_log=True)
    client.get(
        "/recommend",
        params={"user_id": reference.users[0]},
        headers={"X-Request-ID": "trace-7", "X-Variant": "teacher"},
    )
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    access = [e for e in lines if e.get("logger") == "app.access"]
    assert access and access[-1]["request_id"] == "trace-7"
    assert access[-1]["route"] == "/recommend" and access[-1]["variant"] == "teacher"
    assert access[-1]["status"] == 200


def test_uvicorn_colour_messages_stay_out_of_json() -> None:
    record = _record("Started server process [%d]", color_message="\x1b[36mStarted\x1b[0m")
    line = JsonFormatter().format(record)
    assert "color_message" not in json.loads(line) and "\x1b" not in line


def test_the_uvicorn_log_config_is_the_json_set_up() -> None:
    import logging.config  # noqa: PLC0415

    from app.logging_setup import HANDLER_NAME, LOG_CONFIG_PATH  # noqa: PLC0415

    config = json.loads(LOG_CONFIG_PATH.read_text())
    logging.config.dictConfig(config)
    for name in ("uvicorn", "uvicorn.error", "app"):
        handlers = logging.getLogger(name).handlers
        assert [h.get_name() for h in handlers] == [HANDLER_NAME]
        assert isinstance(handlers[0].formatter, JsonFormatter)
    # Requests are logged once, by the app's middleware (app.access), not by uvicorn.
    assert not logging.getLogger("uvicorn.access").hasHandlers()
