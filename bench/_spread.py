"""Seeds and spread: every headline figure of the benchmarks as a mean over seeds.

A benchmark runs each fold once per seed (`seed_list`); a headline figure is first
averaged over the folds within a seed, and the spread is taken over those per-seed
means (`spread`), so a difference smaller than the spread is not read as a result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def seed_list(first: int, n: int) -> list[int]:
    """The seeds of a run: `n` consecutive seeds from `first`."""
    if n < 1:
        raise ValueError(f"--seeds must be at least 1, got {n}")
    return list(range(first, first + n))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max of finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0.0}
    mean = sum(finite) / len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) if len(finite) > 1 else 0.0
    return {
        "mean": mean,
        "std": math.sqrt(var),
        "min": min(finite),
        "max": max(finite),
        "n": float(len(finite)),
    }


def per_seed_means(
    entries: Iterable[Mapping[str, Any]], *, metrics: Sequence[str]
) -> dict[int, dict[str, dict[str, float]]]:
    """seed -> row name -> metric -> mean over that seed's folds.

    `entries` are one per (fold, seed): {"seed": s, "rows": {name: {metric: value}}}.
    A metric enters a row's mean only where every fold of the seed has it as a float.
    """
    by_seed: dict[int, list[Mapping[str, Any]]] = {}
    for entry in entries:
        by_seed.setdefault(int(entry.get("seed", 0)), []).append(entry)
    out: dict[int, dict[str, dict[str, float]]] = {}
    for seed, group in sorted(by_seed.items()):
        rows: dict[str, dict[str, float]] = {}
        for name in group[0]["rows"]:
            rows[name] = {}
            for metric in metrics:
                values = [g["rows"].get(name, {}).get(metric) for g in group]
                if all(isinstance(v, float) for v in values):
                    rows[name][metric] = sum(values) / len(values)
        out[seed] = rows
    return out


def summarise(
    entries: Iterable[Mapping[str, Any]], *, metrics: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """row name -> metric -> spread over seeds of the per-seed fold means."""
    seeds = per_seed_means(entries, metrics=metrics)
    names: dict[str, None] = {}
    for rows in seeds.values():
        names.update(dict.fromkeys(rows))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        out[name] = {}
        for metric in metrics:
            values = [rows[name][metric] for rows in seeds.values() if metric in rows.get(name, {})]
            if values:
                out[name][metric] = spread(values)
    return out


def fmt_spread(s: Mapping[str, float] | None, digits: int = 4) -> str:
    """'mean ± std' (the mean alone for one seed); '-' when nothing was measured."""
    if not s or not s.get("n") or not math.isfinite(s["mean"]):
        return "-"
    if s["n"] < 2:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
