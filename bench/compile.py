"""Does torch.compile speed up a teacher component's training step on this machine?

    python -m bench.compile --data-dir $MOVIELENS_DIR [--components mf,xdeepfm,autoint]

For each component: the same seeded model, optimiser and batches, eager and then with the
step's loss module compiled (`torch.compile` of `train.ComponentObjective`, the module
DistributedDataParallel wraps too); the first steps (which compile) are timed apart from
the steady-state steps. One torch thread. Prints one JSON line per component.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

log = logging.getLogger("bench.compile")


def measure(data_dir: Path, name: str, *, warm_steps: int, steps: int) -> dict[str, Any]:
    from training import train as T  # noqa: PLC0415 - torch only when measuring
    from training.data import load_dataset  # noqa: PLC0415

    dataset = load_dataset(data_dir)
    ratings = dataset.ratings
    config = {"mf": T.MFConfig(), "xdeepfm": T.XDeepFMConfig(), "autoint": T.AutoIntConfig()}[name]
    out: dict[str, Any] = {"component": name, "batch_size": config.batch_size}
    for compiled in (False, True):
        T.set_seed(0)
        model = T.build_component(
            name, dataset.feature_map, config, global_mean=float(ratings.rating.mean())
        )
        trainer = T.Trainer(
            name=name,
            model=model,
            config=config,
            data=T.TrainData.build(ratings, dataset.tables, dataset.feature_map),
            opt=T.make_optimizer(model, config),
            gen=torch.Generator().manual_seed(0),
            progress=False,
        )
        if compiled:
            # torch.compile of a Module returns a Module (OptimizedModule), typed as Callable.
            trainer.objective = cast(torch.nn.Module, torch.compile(T.ComponentObjective(trainer)))
        order = torch.randperm(len(trainer.data), generator=torch.Generator().manual_seed(1))
        batches = order.split(config.batch_size)
        started = time.perf_counter()
        for idx in batches[:warm_steps]:
            T.train_step(trainer, idx)
        warm = time.perf_counter() - started
        started = time.perf_counter()
        for idx in batches[warm_steps : warm_steps + steps]:
            T.train_step(trainer, idx)
        key = "compiled" if compiled else "eager"
        out[f"{key}_first_steps_s"] = round(warm, 2)
        out[f"{key}_ms_per_step"] = round(1000 * (time.perf_counter() - started) / steps, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="MovieLens-100K folder")
    parser.add_argument("--components", default="mf,xdeepfm,autoint")
    parser.add_argument("--warm-steps", type=int, default=3, help="first steps, timed apart")
    parser.add_argument("--steps", type=int, default=30, help="steady-state steps timed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    for name in args.components.split(","):
        row = measure(args.data_dir, name, warm_steps=args.warm_steps, steps=args.steps)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
