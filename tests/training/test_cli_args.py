"""training/cli_args.py: argument types that refuse what argparse alone would misread."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from training.cli_args import MAX_SEED, MAX_WORKERS, path_arg, positive, seed, workers


def test_paths_keep_their_text_and_refuse_empty_ones() -> None:
    assert path_arg("models") == Path("models")
    assert path_arg(".") == Path(".")
    for empty in ("", "  "):
        with pytest.raises(argparse.ArgumentTypeError, match="an empty path"):
            path_arg(empty)


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (positive, "0", "0 is below 1"),
        (positive, "2.5", "'2.5' is not an integer"),
        (workers, str(MAX_WORKERS + 1), f"{MAX_WORKERS + 1} is above {MAX_WORKERS}"),
        (seed, str(MAX_SEED + 1), f"{MAX_SEED + 1} is above {MAX_SEED}"),
        (seed, "-1", "-1 is below 0"),
    ],
)
def test_numbers_out_of_range_are_named(
    parse: Callable[[str], int], text: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_numbers_in_range_pass() -> None:
    assert (positive("3"), workers("0"), seed(str(MAX_SEED))) == (3, 0, MAX_SEED)
