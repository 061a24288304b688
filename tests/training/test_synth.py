"""training/synth.py: deterministic, learnable, Zipf-shaped data in the ml-latest format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import synth
from training.data import Ratings, holdout, load_dataset
from training.evaluate import damped_item_means
from training.synth import (
    GENRES,
    SynthConfig,
    SynthError,
    _movies_block,
    _plant,
    generate,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = SynthConfig(n_users=400, n_items=600, n_ratings=40_000, seed=7)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert generate(SMALL, out) == {"users": 400, "items": 600, "ratings": 40_000}
    return out


def test_files_load_as_ml_latest(small: Path) -> None:
    assert (small / "ratings.csv").read_text().startswith("userId,movieId,rating,timestamp\n")
    assert (small / "movies.csv").read_text().startswith("movieId,title,genres\n")
    ds = load_dataset(small, dataset="ml-latest")
    assert (ds.feature_map.n_users, ds.feature_map.n_items, len(ds.ratings)) == (400, 600, 40_000)
    assert set(ds.feature_map.genres) <= set(GENRES)
    assert set(np.unique(ds.ratings.rating).tolist()) <= {k / 2 for k in range(1, 11)}
    keys = ds.ratings.user * 10_000 + ds.ratings.item
    assert np.unique(keys).size == len(keys)  # no user rates an item twice
    assert np.all(np.bincount(ds.ratings.user)[1:] >= SMALL.min_per_user)
    assert [f.name for f in ds.feature_map.item_fields] == ["year"]
    assert any(", The (" in meta["title"] for meta in ds.items_meta)  # quoted commas survive
    per_item = ds.tables.item_genres[1:].sum(axis=1)
    assert 1.0 <= per_item.mean() <= 3.5


def test_same_seed_same_bytes_other_seed_other_data(small: Path, tmp_path: Path) -> None:
    generate(SMALL, tmp_path / "again")
    for name in ("ratings.csv", "movies.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (small / name).read_bytes()
    other = SynthConfig(n_users=400, n_items=600, n_ratings=40_000, seed=8)
    generate(other, tmp_path / "other")
    assert (tmp_path / "other" / "ratings.csv").read_bytes() != (small / "ratings.csv").read_bytes()


def _slope(counts: np.ndarray, lo: int, hi: int) -> float:
    """Log-log slope of the sorted counts over ranks lo+1..hi."""
    ranked = np.sort(counts)[::-1][lo:hi].astype(float)
    return float(np.polyfit(np.log(np.arange(lo + 1, hi + 1)), np.log(ranked), 1)[0])


def test_popularity_and_activity_are_zipf_shaped(tmp_path: Path) -> None:
    """Power laws below the head (where one rating per user and item, and the floor of
    ratings per user, flatten them, as in real logs)."""
    generate(SynthConfig(n_users=3000, n_items=2000, n_ratings=60_000, seed=7), tmp_path)
    ds = load_dataset(tmp_path, dataset="ml-latest")
    item_counts = np.bincount(ds.ratings.item, minlength=2001)[1:]
    user_counts = np.bincount(ds.ratings.user, minlength=3001)[1:]
    assert -1.2 < _slope(item_counts, 10, 300) < -0.65
    assert -1.0 < _slope(user_counts, 10, 300) < -0.55
    ranked = np.sort(item_counts)[::-1]
    assert ranked[:200].sum() > 0.5 * ranked.sum()  # the top 10% of items: most ratings
    assert ranked[:200].mean() > 10 * np.median(ranked)


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.clip(pred, 0.5, 5.0) - truth) ** 2)))


def _groups(index: np.ndarray, n: int) -> list[np.ndarray]:
    """Row numbers of each index value 0..n."""
    order = np.argsort(index, kind="stable")
    return np.split(order, np.cumsum(np.bincount(index, minlength=n + 1))[:-1])


def _als_predict(train: Ratings, test: Ratings, n_users: int, n_items: int) -> np.ndarray:
    """Biased matrix factorisation by a few sweeps of alternating least squares."""
    rank, reg = 8, 5.0
    rng = np.random.default_rng(0)
    mu = float(train.rating.mean())
    factors = [rng.normal(0, 0.1, (n + 1, rank)) for n in (n_users, n_items)]
    biases = [np.zeros(n_users + 1), np.zeros(n_items + 1)]
    index = [train.user, train.item]
    groups = [_groups(train.user, n_users), _groups(train.item, n_items)]
    for _ in range(6):
        for side in (0, 1):
            other = 1 - side
            for entity, rows in enumerate(groups[side]):
                if rows.size == 0:
                    continue
                partner = index[other][rows]
                x = np.c_[factors[other][partner], np.ones(rows.size)]
                y = train.rating[rows] - mu - biases[other][partner]
                solution = np.linalg.solve(x.T @ x + reg * np.eye(rank + 1), x.T @ y)
                factors[side][entity], biases[side][entity] = solution[:-1], solution[-1]
    dot = (factors[0][test.user] * factors[1][test.item]).sum(axis=1)
    return mu + biases[0][test.user] + biases[1][test.item] + dot


def test_data_is_learnable(small: Path) -> None:
    """Item means beat the global mean and a small factor model beats item means."""
    ds = load_dataset(small, dataset="ml-latest")
    train, test = holdout(ds.ratings, fraction=0.2, seed=0)
    mean_rmse = _rmse(np.full(len(test), train.rating.mean()), test.rating)
    item_rmse = _rmse(damped_item_means(train, n_items=600)[test.item], test.rating)
    mf_rmse = _rmse(_als_predict(train, test, 400, 600), test.rating)
    assert item_rmse < mean_rmse - 0.03
    assert mf_rmse < item_rmse - 0.15


def test_genres_follow_the_item_factors() -> None:
    config = SynthConfig(n_users=50, n_items=3000, n_ratings=1000, seed=1)
    model = _plant(config)
    flags = np.zeros((3000, len(GENRES)), bool)
    table = _movies_block(config, model, 0, 3000)
    for row, text in enumerate(table.column("genres").to_pylist()):
        for name in text.split("|"):
            if name in GENRES:
                flags[row, GENRES.index(name)] = True
    # A least-squares fit from the factors explains each common genre far above chance.
    x = np.c_[model.item_factors, np.ones(3000)]
    explained = []
    for j in range(len(GENRES)):
        if flags[:, j].mean() < 0.05:
            continue
        y = flags[:, j].astype(float)
        fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
        explained.append(1 - np.var(y - fit) / np.var(y))
    assert explained and float(np.mean(explained)) > 0.1


def test_large_catalogue_is_fast_and_bounded(tmp_path: Path) -> None:
    config = SynthConfig(n_users=2000, n_items=1_000_000, n_ratings=200_000, seed=0)
    summary = generate(config, tmp_path)
    assert summary == {"users": 2000, "items": 1_000_000, "ratings": 200_000}
    with (tmp_path / "movies.csv").open() as handle:
        assert sum(1 for _ in handle) == 1_000_001


def test_impossible_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="do not fit"):
        generate(SynthConfig(n_users=2, n_items=10, n_ratings=11), tmp_path)
    with pytest.raises(SynthError, match="at least 1"):
        generate(SynthConfig(n_users=0, n_items=10, n_ratings=1), tmp_path)


def test_an_interrupted_run_leaves_no_data_set_to_load(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shorter ratings.csv that ends on a whole line would load as a data set of its own.
    out = tmp_path / "s"
    generate(SMALL, out)
    before = (out / "ratings.csv").read_bytes()
    blocks = 0

    def interrupted(*args: object, **kwargs: object) -> None:
        nonlocal blocks
        blocks += 1
        if blocks > 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(SynthConfig(n_users=900, n_items=600, n_ratings=80_000, seed=1), out)
    assert (out / "ratings.csv").read_bytes() == before  # the last whole run's file


def test_command_line(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-m", "training", "synth", "--users", "30", "--items", "40",
         "--ratings", "300", "--seed", "3", "--out", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "d")
    assert len((tmp_path / "d" / "ratings.csv").read_text().splitlines()) == 301
    bad = subprocess.run(
        [sys.executable, "-m", "training", "synth", "--users", "2", "--items", "4",
         "--ratings", "300", "--out", str(tmp_path / "e")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: 300 ratings do not fit")
    assert len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
