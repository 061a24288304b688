"""Small synthetic data in the real MovieLens file formats (never real MovieLens files).

Ratings follow a planted low-rank model with user and item biases, so a model that learns
anything beats the global mean by a clear margin and a broken one does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
OCCUPATIONS = ("engineer", "student", "writer", "other", "educator")


def planted_ratings(
    *, n_users: int, n_items: int, n_ratings: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rank = 3
    pu = rng.normal(0, 0.7, (n_users, rank))
    qi = rng.normal(0, 0.7, (n_items, rank))
    bu = rng.normal(0, 0.4, n_users)
    bi = rng.normal(0, 0.5, n_items)
    # Popular items get rated more often, as in real logs.
    weights = np.exp(bi * 2)
    pairs: set[tuple[int, int]] = set()
    n_ratings = min(n_ratings, n_users * n_items // 2)
    while len(pairs) < n_ratings:
        u = rng.integers(0, n_users, n_ratings)
        i = rng.choice(n_items, n_ratings, p=weights / weights.sum())
        pairs.update(zip(u.tolist(), i.tolist(), strict=True))
    chosen = np.array(sorted(pairs)[:n_ratings])
    users, items = chosen[:, 0], chosen[:, 1]
    raw = 3.5 + bu[users] + bi[items] + (pu[users] * qi[items]).sum(1)
    ratings = np.clip(np.rint(raw + rng.normal(0, 0.3, len(raw))), 1, 5).astype(int)
    stamps = 880_000_000 + rng.integers(0, 10_000_000, len(raw))
    return users + 1, items + 1, ratings, stamps


def write_ml100k(
    root: Path, *, n_users: int = 60, n_items: int = 80, n_ratings: int = 2000, seed: int = 0
) -> Path:
    """Writes u.data, u.user, u.item, u.genre and folds u1..u5, ua, ub into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    users, items, ratings, stamps = planted_ratings(
        n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed
    )
    lines = [
        f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(users, items, ratings, stamps, strict=True)
    ]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    (root / "u.genre").write_text("".join(f"{g}|{j}\n" for j, g in enumerate(GENRES)) + "\n")
    user_lines = []
    for u in range(1, n_users + 1):
        age = int(rng.integers(12, 70))
        gender = "MF"[int(rng.integers(0, 2))]
        occupation = OCCUPATIONS[int(rng.integers(0, len(OCCUPATIONS)))]
        user_lines.append(f"{u}|{age}|{gender}|{occupation}|{int(rng.integers(10000, 99999))}")
    (root / "u.user").write_text("\n".join(user_lines) + "\n")
    item_lines = []
    for i in range(1, n_items + 1):
        year = int(rng.integers(1930, 1999))
        flags = (rng.random(len(GENRES)) < 0.15).astype(int)
        item_lines.append(
            f"{i}|Movie {i} ({year})|01-Jan-{year}||http://example.invalid/{i}|"
            + "|".join(map(str, flags))
        )
    (root / "u.item").write_text("\n".join(item_lines) + "\n", encoding="latin-1")
    fold = rng.integers(0, 5, len(lines))
    for k in range(5):
        (root / f"u{k + 1}.base").write_text(
            "".join(f"{x}\n" for x, f in zip(lines, fold, strict=True) if f != k)
        )
        (root / f"u{k + 1}.test").write_text(
            "".join(f"{x}\n" for x, f in zip(lines, fold, strict=True) if f == k)
        )
    # ua/ub: a few ratings per user in the test part, like the canonical files.
    per_user_test = rng.random(len(lines)) < 0.1
    for name in ("ua", "ub"):
        (root / f"{name}.base").write_text(
            "".join(f"{x}\n" for x, t in zip(lines, per_user_test, strict=True) if not t)
        )
        (root / f"{name}.test").write_text(
            "".join(f"{x}\n" for x, t in zip(lines, per_user_test, strict=True) if t)
        )
    return root


def write_ml1m(
    root: Path, *, n_users: int = 40, n_items: int = 50, n_ratings: int = 800, seed: int = 0
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    users, items, ratings, stamps = planted_ratings(
        n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed
    )
    (root / "ratings.dat").write_text(
        "".join(
            f"{u}::{i}::{r}::{t}\n"
            for u, i, r, t in zip(users, items, ratings, stamps, strict=True)
        )
    )
    ages = (1, 18, 25, 35, 45, 50, 56)
    (root / "users.dat").write_text(
        "".join(
            f"{u}::{'MF'[u % 2]}::{ages[u % len(ages)]}::{u % 21}::{zip_code}\n"
            for u, zip_code in enumerate(rng.integers(10000, 99999, n_users), start=1)
        )
    )
    (root / "movies.dat").write_text(
        "".join(
            f"{i}::Film {i} ({1950 + i % 48})::{GENRES[1 + i % 18]}|{GENRES[1 + (i * 7) % 18]}\n"
            for i in range(1, n_items + 1)
        ),
        encoding="latin-1",
    )
    return root


def write_ml_latest(
    root: Path, *, n_users: int = 40, n_items: int = 50, n_ratings: int = 800, seed: int = 0
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    users, items, ratings, stamps = planted_ratings(
        n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed
    )
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(
            f"{u},{i * 10},{r - 0.5 if r > 1 else r}.0,{t}\n".replace(".5.0", ".5")
            for u, i, r, t in zip(users, items, ratings, stamps, strict=True)
        )
    )
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        + "".join(
            f'{i * 10},"Film, The {i} ({1960 + i % 40})",Comedy|Drama\n'
            for i in range(1, n_items + 1)
        )
    )
    return root
