"""How long does one optimiser step on a large sparse embedding table take?

    python -m bench.lazy_adam [--rows 1000000] [--dim 32] [--batch 2048] [--steps 50]

Steps torch's `SparseAdam` and `training.sparse.LazyAdam` (which makes the same update)
over the same sparse gradients of a `rows x dim` table, each gradient naming `batch`
random rows, on one torch thread, and prints one JSON line: milliseconds per step for
each and the largest difference between the two tables afterwards (0: the same update).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from training.sparse import LazyAdam


def _seconds(opt: torch.optim.Optimizer, param: torch.Tensor, grads: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for grad in grads:
        param.grad = grad
        opt.step()
    return time.perf_counter() - start


def measure(*, rows: int, dim: int, batch: int, steps: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    grads = [
        torch.sparse_coo_tensor(
            torch.randint(0, rows, (1, batch), generator=gen),
            torch.randn(batch, dim, generator=gen),
            (rows, dim),
            check_invariants=True,
        )
        for _ in range(steps)
    ]
    start = torch.randn(rows, dim, generator=gen)
    theirs, ours = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start)
    sparse_adam = _seconds(torch.optim.SparseAdam([theirs]), theirs, grads)
    lazy_adam = _seconds(LazyAdam([ours]), ours, grads)
    return {
        "rows": rows,
        "dim": dim,
        "batch": batch,
        "steps": steps,
        "sparse_adam_ms": round(1000 * sparse_adam / steps, 3),
        "lazy_adam_ms": round(1000 * lazy_adam / steps, 3),
        "max_abs_diff": float((theirs - ours).detach().abs().max()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lazy_adam", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048, help="rows each gradient names")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    row = measure(rows=args.rows, dim=args.dim, batch=args.batch, steps=args.steps)
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
