"""Start-up checks whose failure is one clear line for the operator, never a traceback.

The lifespan raises StartupError; the request-context middleware (app/middleware.py) hands
uvicorn only its message, so the log shows what to fix and the command that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from app.config import Settings

BUILD_BUNDLE_HINT = (
    "build one with `make bundle` (or `python -m training pipeline --dataset ml-100k "
    "--split none --out-dir models`) and point MODEL_DIR at models/current"
)


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


def _setting_error(error: dict[str, object]) -> str:
    loc = error.get("loc") or ()
    name = str(loc[0]).upper() if isinstance(loc, tuple) and loc else "settings"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    value = error.get("input")
    shown = f"={value}" if isinstance(value, str | int | float) else ""
    return f"{name}{shown}: {message}"


def load_settings() -> Settings:
    """Settings from the environment; an invalid value is a StartupError naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_setting_error(dict(e)) for e in exc.errors())
        raise StartupError(f"invalid setting: {problems}") from None


def require_bundle(model_dir: Path) -> None:
    """A StartupError when MODEL_DIR holds no bundle at all (no manifest.json).

    A bundle that is there but broken is the loader's to explain (app/bundle.py).
    """
    if not (Path(model_dir) / "manifest.json").is_file():
        where = "does not exist" if not Path(model_dir).exists() else "has no manifest.json"
        raise StartupError(
            f"no model bundle at MODEL_DIR={model_dir} ({where}): {BUILD_BUNDLE_HINT}"
        )


def one_line(exc: BaseException) -> str:
    """What the log says about a failed start: the message alone for a StartupError, the
    exception type and its first line otherwise."""
    if isinstance(exc, StartupError):
        return str(exc)
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"start-up failed: {type(exc).__name__}: {first}" if first else type(exc).__name__
