"""How long does MF's sampled rating head take per Gibbs sweep on this machine?

    python -m bench.gibbs --data-dir $MOVIELENS_DIR [--sweeps 40] [--repeat 3] [--profile 15]
        [--holdout 0.1]

Samples MF's rating head (`training.bayes_rating.fit_rating_head`, the default MF's
shapes and the rank of its draws) on every rating of the data set, `--repeat` times from
the same seed, on one torch thread, and prints one JSON line: the median seconds and
milliseconds per sweep, and the run's figures (training RMSE of the averaged draws,
noise). `--profile N` also logs cProfile's N functions with the most own time (of one
more run). The same seed gives the same draws, so two versions of the sampler can be
compared on their figures as well as their time.

`--holdout F` samples on all but a seeded fraction F of the ratings (`data.holdout`,
seed 0) and also reports the RMSE on that fraction (`holdout_rmse`), so that numbers of
sweeps can be compared on held-out data.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("bench.gibbs")


def _sample(
    data_dir: Path, dataset_name: str, sweeps: int, holdout_share: float
) -> dict[str, float]:
    from training import train as T  # noqa: PLC0415 - torch only when measuring
    from training.bayes_rating import fit_rating_head  # noqa: PLC0415
    from training.data import holdout, load_dataset  # noqa: PLC0415
    from training.evaluate import predict_pairs, rating_metrics  # noqa: PLC0415
    from training.models.mf import BiasedMF  # noqa: PLC0415

    dataset = load_dataset(data_dir, dataset=dataset_name)
    ratings, tables = dataset.ratings, dataset.tables
    held = None
    if holdout_share > 0:
        ratings, held = holdout(ratings, fraction=holdout_share, seed=0)
    config = T.MFConfig(bayes_sweeps=sweeps)
    T.set_seed(0)
    model = T.build_component(
        "mf", dataset.feature_map, config, global_mean=float(ratings.rating.mean())
    )
    settings = T.bayes_settings(config, dataset.feature_map)
    if settings is None or not isinstance(model, BiasedMF):
        raise SystemExit(f"MF's rating head is not sampled on {data_dir} (catalogue too large)")
    figures = fit_rating_head(
        model,
        users=torch.as_tensor(ratings.user),
        items=torch.as_tensor(ratings.item),
        ratings=torch.as_tensor(ratings.rating),
        tables=(
            torch.as_tensor(tables.user_feats),
            torch.as_tensor(tables.item_feats),
            torch.as_tensor(tables.item_genres),
        ),
        settings=settings,
    )
    # Item rows without ratings are drawn from their prior, not one by one.
    figures["items"] = float(dataset.feature_map.n_items)
    figures["items_rated"] = float(np.unique(ratings.item).size)
    if held is not None:
        pred, _ = predict_pairs(model, tables, held.user, held.item)
        figures["holdout_rmse"] = rating_metrics(pred, held.rating)["rmse"]
    return figures


def measure(
    data_dir: Path, dataset: str, *, sweeps: int, repeat: int, holdout: float = 0.0
) -> dict[str, Any]:
    seconds, figures = [], {}
    for _ in range(repeat):
        figures = _sample(data_dir, dataset, sweeps, holdout)
        seconds.append(figures["seconds"])  # the sampler's own time, not the data's loading
    median = statistics.median(seconds)
    return {
        "dataset": dataset,
        "sweeps": int(figures["sweeps"]),
        # To 10 us: a short run's sweep takes a few milliseconds, which a rounding to the
        # millisecond would blur by more than ms_per_sweep's own rounding.
        "seconds": [round(s, 5) for s in seconds],
        "median_seconds": round(median, 5),
        "ms_per_sweep": round(1000 * median / figures["sweeps"], 2),
        "train_rmse": figures["train_rmse"],
        "noise_std": figures["noise_std"],
        "items": int(figures["items"]),
        "items_rated": int(figures["items_rated"]),
        **({"holdout": holdout, "holdout_rmse": figures["holdout_rmse"]} if holdout else {}),
    }


def profile(data_dir: Path, dataset: str, *, sweeps: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    _sample(data_dir, dataset, sweeps, 0.0)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gibbs", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="the data set's folder")
    parser.add_argument("--dataset", default="ml-100k", help="its format (training.data)")
    parser.add_argument("--sweeps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median)")
    parser.add_argument("--profile", type=int, default=0, help="log the top N functions")
    parser.add_argument("--holdout", type=float, default=0.0, help="share held out and scored")
    args = parser.parse_args(argv)
    if not 0.0 <= args.holdout < 1.0:
        parser.error(f"--holdout must be in [0, 1), not {args.holdout}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("training").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    row = measure(
        args.data_dir, args.dataset, sweeps=args.sweeps, repeat=args.repeat, holdout=args.holdout
    )
    sys.stdout.write(json.dumps(row) + "\n")
    if args.profile:
        log.info("%s", profile(args.data_dir, args.dataset, sweeps=args.sweeps, top=args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
