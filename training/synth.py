"""Synthetic rating data in the ml-latest format, with structure a model can learn.

Users and items get low-rank factors; an item's genres follow its factors; a rating is the
factors' inner product plus biases and noise, quantised to MovieLens' half stars. Item
popularity and user activity follow Zipf laws, as in real logs, so benchmarks meet the
same long tails. Output is deterministic by seed. Work is vectorised and written in blocks
of about a million ratings, so memory stays bounded at 10^7 ratings and 10^6 items.

Writes `ratings.csv` (userId,movieId,rating,timestamp; sorted by user, then item) and
`movies.csv` (movieId,title,genres), readable with `--dataset ml-latest`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from training.columnar import unique_sorted

log = logging.getLogger(__name__)

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
HALF_STARS = tuple(f"{k / 2:.1f}" for k in range(1, 11))  # "0.5" .. "5.0", as ml-latest
# A fixed block size: the random streams are drawn per block, so changing it would change
# the data a seed gives.
_BLOCK_RATINGS = 1 << 20
_BLOCK_ITEMS = 1 << 18
_FIRST_TIME, _LAST_TIME = 828_000_000, 1_700_000_000  # 1996 .. 2023, seconds
# At most this share of the catalogue per user, so distinct items are always found fast.
_MAX_USER_SHARE = 0.5


# 100 million users or items (rank-8 factors: 6.4 GB) and 10 billion ratings (~300 GB of
# CSV): far beyond MovieLens-25M, and still a size some machine can hold.
MAX_ENTITIES = 10**8
MAX_RATINGS = 10**10


class SynthError(ValueError):
    """The requested sizes cannot be generated (e.g. more ratings than user-item pairs)."""


@dataclass(frozen=True)
class SynthConfig:
    n_users: int
    n_items: int
    n_ratings: int
    seed: int = 0
    rank: int = 8
    item_zipf: float = 1.0  # popularity of the r-th most popular item ~ r^-item_zipf
    user_zipf: float = 0.8  # activity of the r-th most active user ~ r^-user_zipf
    min_per_user: int = 5  # every user rates at least this many (when the budget allows)
    noise: float = 0.5  # standard deviation of the rating noise, in stars

    def check(self) -> None:
        if min(self.n_users, self.n_items, self.n_ratings, self.rank) < 1:
            raise SynthError("users, items, ratings and rank must all be at least 1")
        if max(self.n_users, self.n_items) > MAX_ENTITIES or self.n_ratings > MAX_RATINGS:
            raise SynthError(
                f"at most {MAX_ENTITIES:,} users or items and {MAX_RATINGS:,} ratings "
                "(the planted factors and the files must fit a machine)"
            )
        capacity = self.n_users * max(1, int(self.n_items * _MAX_USER_SHARE))
        if self.n_ratings > capacity:
            raise SynthError(
                f"{self.n_ratings} ratings do not fit: each of {self.n_users} users rates at "
                f"most {_MAX_USER_SHARE:.0%} of {self.n_items} items ({capacity} ratings)"
            )


@dataclass(frozen=True)
class _Model:
    """The planted model: what every block of ratings is drawn from."""

    user_factors: np.ndarray  # float32 [U, rank]
    item_factors: np.ndarray  # float32 [M, rank]
    user_bias: np.ndarray  # float32 [U]
    item_bias: np.ndarray  # float32 [M]
    item_cdf: np.ndarray  # float64 [M], cumulative popularity
    user_counts: np.ndarray  # int64 [U], ratings per user
    user_start: np.ndarray  # int64 [U], first activity time
    user_span: np.ndarray  # int64 [U], seconds of activity


def _rng(config: SynthConfig, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, block])


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n entities in a random order (rank r has weight r^-exponent)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights[rng.permutation(n)]


def _user_counts(config: SynthConfig, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: a floor for everyone, the rest by Zipf activity, capped."""
    cap = max(1, int(config.n_items * _MAX_USER_SHARE))
    floor = min(config.min_per_user, config.n_ratings // config.n_users, cap)
    counts = np.full(config.n_users, floor, np.int64)
    left = config.n_ratings - int(counts.sum())
    while left > 0:
        open_ = counts < cap
        share = np.where(open_, weights, 0.0)
        counts += rng.multinomial(left, share / share.sum())
        counts = np.minimum(counts, cap)
        left = config.n_ratings - int(counts.sum())
    return counts


def _plant(config: SynthConfig) -> _Model:
    rng = _rng(config, 0)
    # Entries of scale s give inner products of standard deviation about 0.8 stars.
    scale = (0.8**2 / config.rank) ** 0.25
    users, items = config.n_users, config.n_items
    item_bias = rng.normal(0.0, 0.4, items).astype(np.float32)
    # Popular items tend to be the better ones, as in real logs (a noisy rank by bias).
    popularity_rank = np.argsort(np.argsort(-(item_bias / 0.4 + rng.normal(0.0, 1.0, items))))
    item_weights = (popularity_rank + 1.0) ** -config.item_zipf
    cdf = np.cumsum(item_weights)
    start = rng.integers(_FIRST_TIME, _LAST_TIME, users)
    return _Model(
        user_factors=rng.normal(0.0, scale, (users, config.rank)).astype(np.float32),
        item_factors=rng.normal(0.0, scale, (items, config.rank)).astype(np.float32),
        user_bias=rng.normal(0.0, 0.3, users).astype(np.float32),
        item_bias=item_bias,
        item_cdf=cdf / cdf[-1],
        user_counts=_user_counts(config, _zipf_weights(users, config.user_zipf, rng), rng),
        user_start=start,
        user_span=np.minimum(rng.exponential(3.0e7, users).astype(np.int64), _LAST_TIME - start),
    )


def _user_blocks(counts: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive user ranges [lo, hi) of about _BLOCK_RATINGS ratings each."""
    ends = np.cumsum(counts)
    lo = 0
    while lo < len(counts):
        target = (ends[lo - 1] if lo else 0) + _BLOCK_RATINGS
        hi = max(lo + 1, int(np.searchsorted(ends, target, side="right")))
        yield lo, hi
        lo = hi


def _pairs(
    model: _Model, lo: int, hi: int, n_items: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs for users lo..hi-1, items drawn by popularity.

    Draws with replacement and redraws what was a repeat; a user whose popular items run
    out draws uniformly (never more than half the catalogue per user, so this ends fast).
    """
    users = np.arange(lo, hi)
    want = model.user_counts[lo:hi]
    keys = np.zeros(0, np.int64)
    missing = want
    for attempt in range(1000):
        owners = np.repeat(users, missing)
        if attempt < 8:
            drawn = np.searchsorted(model.item_cdf, rng.random(len(owners)), side="right")
            drawn = np.minimum(drawn, n_items - 1)
        else:
            drawn = rng.integers(0, n_items, len(owners))
        # Each round draws only what is missing, so no user ever has more than it wants.
        keys = unique_sorted(np.concatenate([keys, owners * n_items + drawn]))
        missing = want - np.bincount(keys // n_items - lo, minlength=hi - lo)
        if not missing.any():
            return keys // n_items, keys % n_items
    raise SynthError("could not draw distinct items; use more items or fewer ratings")


def _ratings_block(config: SynthConfig, model: _Model, block: int, lo: int, hi: int) -> pa.Table:
    rng = _rng(config, 1, block)
    user, item = _pairs(model, lo, hi, config.n_items, rng)
    score = (model.user_factors[user] * model.item_factors[item]).sum(axis=1)
    raw = 3.5 + model.user_bias[user] + model.item_bias[item] + score
    raw = raw + rng.normal(0.0, config.noise, len(raw))
    half_stars = np.clip(np.rint(raw * 2.0), 1, 10).astype(np.int64)
    stamps = model.user_start[user] + (rng.random(len(user)) * model.user_span[user])
    return pa.table(
        {
            "userId": user + 1,
            "movieId": item + 1,
            "rating": pc.take(pa.array(HALF_STARS), pa.array(half_stars - 1)),
            "timestamp": stamps.astype(np.int64),
        }
    )


def _movies_block(config: SynthConfig, model: _Model, lo: int, hi: int) -> pa.Table:
    """Titles with a year, and genres that follow the item factors."""
    rng = _rng(config, 2, lo)
    genre_rng = _rng(config, 3)  # the same genre directions for every block
    directions = genre_rng.normal(0.0, 1.0, (len(GENRES), config.rank))
    prevalence = genre_rng.uniform(0.01, 0.15, len(GENRES))
    factors = model.item_factors[lo:hi] / model.item_factors.std()
    logits = factors @ directions.T / np.sqrt(config.rank) * 1.5
    logits += np.log(prevalence / (1.0 - prevalence))
    flags = rng.random(logits.shape) < 1.0 / (1.0 + np.exp(-logits))
    rows, cols = np.nonzero(flags)
    offsets = np.zeros(hi - lo + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=hi - lo), out=offsets[1:])
    joined = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.array(GENRES)[cols])), "|"
    )
    genres = pc.if_else(pc.equal(joined, ""), "(no genres listed)", joined)
    ids = pa.array(np.arange(lo + 1, hi + 1))
    year = np.clip(2023 - rng.exponential(18.0, hi - lo).astype(np.int64), 1902, 2023)
    number = pc.cast(ids, pa.string())
    # Every seventh title is "Name, The (year)": a comma that CSV readers must keep quoted.
    name = pc.if_else(
        pa.array(np.arange(lo, hi) % 7 == 0),
        pc.binary_join_element_wise("Synthetic Film ", number, ", The", ""),
        pc.binary_join_element_wise("Synthetic Film ", number, ""),
    )
    title = pc.binary_join_element_wise(name, " (", pc.cast(pa.array(year), pa.string()), ")", "")
    return pa.table({"movieId": ids, "title": title, "genres": genres})


def _append(handle: BinaryIO, table: pa.Table, *, quoting: str) -> None:
    pacsv.write_csv(
        table,
        handle,
        write_options=pacsv.WriteOptions(include_header=False, quoting_style=quoting),
    )


def generate(config: SynthConfig, out_dir: Path) -> dict[str, int]:
    """Writes ratings.csv and movies.csv into out_dir; returns the counts written.

    Both are written under a temporary name and renamed at the end: an interrupted run
    must not leave a shorter ratings.csv that loads as a data set of its own.
    """
    config.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _plant(config)
    movies, ratings = out_dir / "movies.csv.partial", out_dir / "ratings.csv.partial"
    with movies.open("wb") as handle:
        handle.write(b"movieId,title,genres\n")
        for lo in range(0, config.n_items, _BLOCK_ITEMS):
            hi = min(lo + _BLOCK_ITEMS, config.n_items)
            _append(handle, _movies_block(config, model, lo, hi), quoting="needed")
    written = 0
    with ratings.open("wb") as handle:
        handle.write(b"userId,movieId,rating,timestamp\n")
        for block, (lo, hi) in enumerate(_user_blocks(model.user_counts)):
            table = _ratings_block(config, model, block, lo, hi)
            written += table.num_rows
            # Numbers only: no quotes, and ratings keep ml-latest's "4.0" form.
            _append(handle, table, quoting="none")
    movies.replace(out_dir / "movies.csv")
    ratings.replace(out_dir / "ratings.csv")
    summary = {
        "users": int(np.count_nonzero(model.user_counts)),
        "items": config.n_items,
        "ratings": written,
    }
    log.info("wrote %s: %s", out_dir, summary)
    return summary
