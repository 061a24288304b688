"""JSON log lines carrying the id of the request they belong to.

`configure_logging` runs in the lifespan. uvicorn logs before that (process start, "Waiting
for application startup"), so the servers are started with `--log-config` pointing at
LOG_CONFIG_PATH, the same JSON set-up as a dictConfig file: every line is JSON from the
first one (deploy/docker/serve.sh, the Makefile's `serve`).
"""

from __future__ import annotations

import contextvars
import logging
import time
from pathlib import Path
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    # uvicorn adds `color_message`, the message with ANSI colour codes: not for JSON.
    | {"message", "asctime", "color_message"}
)
LOG_CONFIG_PATH = Path(__file__).with_name("log_config.json")
HANDLER_NAME = "app-json"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the service's and uvicorn's loggers; safe to call twice."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.set_name(HANDLER_NAME)
    for name in ("app", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != HANDLER_NAME]
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
    # The middleware writes one access line per request (app.access, ACCESS_LOG); uvicorn's
    # own would be a second, plain-text one.
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True
