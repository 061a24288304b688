"""contract/ids.py: the id rule both sides apply."""

from __future__ import annotations

import pytest

from contract.ids import control_character


@pytest.mark.parametrize("text", ["196", "josé", "用户 7", "a-b_c.d", "x" * 500])
def test_ids_without_control_characters_pass(text: str) -> None:
    assert control_character(text) is None


@pytest.mark.parametrize(
    ("text", "found"),
    [("99\t1", "\\t"), ("1\n2", "\\n"), ("a\r", "\\r"), ("\x00", "\\x00"), ("z\x7f", "\\x7f"),
     ("y\x85z", "\\x85"), ("q\x9f", "\\x9f")],
)  # fmt: skip
def test_the_first_control_character_is_named_escaped(text: str, found: str) -> None:
    assert control_character(text) == found
