"""Argument types of the training CLI (`python -m training` and its `events` commands): a
wrong value is argparse's one-line error naming the option, never a traceback or a silent
reading (an empty path would mean the current folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

MAX_SEED = 2**32 - 1
# Threads and processes: far above any machine, below what torch's C++ integers overflow at.
MAX_WORKERS = 4096
# Sizes and counts: what numpy and torch index with.
MAX_COUNT = 2**62


def integer(text: str, *, minimum: int, maximum: int = MAX_COUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"{value} is above {maximum}")
    return value


def positive(text: str) -> int:
    return integer(text, minimum=1)


def non_negative(text: str) -> int:
    return integer(text, minimum=0)


def workers(text: str) -> int:
    return integer(text, minimum=0, maximum=MAX_WORKERS)


def seed(text: str) -> int:
    # numpy's legacy seeding (used by some of the libraries the steps call) takes 32 bits.
    return integer(text, minimum=0, maximum=MAX_SEED)


def path_arg(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (write . for the current folder)")
    return Path(text)
