"""Start-up checks: an invalid setting or a missing bundle is one line naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.startup import StartupError, load_settings, one_line, require_bundle


def test_an_invalid_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AB_STUDENT_PERCENT", "150")
    monkeypatch.setenv("VARIANT_OVERRIDE", "sometimes")
    with pytest.raises(StartupError) as raised:
        load_settings()
    message = one_line(raised.value)
    assert "\n" not in message
    assert "AB_STUDENT_PERCENT=150: Input should be less than or equal to 100" in message
    assert "VARIANT_OVERRIDE=sometimes" in message


def test_valid_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AB_STUDENT_PERCENT", "30")
    monkeypatch.setenv("ROUTING_FILE", "")
    monkeypatch.setenv("REDIS_PASSWORD", "  ")
    settings = load_settings()
    assert settings.ab_student_percent == 30
    assert settings.routing_file is None and settings.redis_password is None


def test_a_missing_bundle_names_the_command_that_builds_one(tmp_path: Path) -> None:
    for where, reason in ((tmp_path / "absent", "does not exist"), (tmp_path, "no manifest")):
        with pytest.raises(StartupError) as raised:
            require_bundle(where)
        message = one_line(raised.value)
        assert reason in message and "make bundle" in message and str(where) in message
    (tmp_path / "manifest.json").write_text("{}")
    require_bundle(tmp_path)  # there: what is wrong inside is the loader's to say


def test_other_failures_keep_their_first_line_only() -> None:
    assert (
        one_line(ValueError("bad thing\nwith\ndetails")) == "start-up failed: ValueError: bad thing"
    )
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
