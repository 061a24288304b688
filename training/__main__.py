"""Command line: `python -m training COMMAND ...` (also installed as `recsys-train`).

Every command that trains runs the resumable pipeline up to its step, so
`train-teacher`, then `distill`, then `pipeline` reuse each other's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training.bundle import BundleError, verify_bundle
from training.data import DATASETS, SPLITS, DataError
from training.device import DEVICES, DeviceError
from training.distributed import current
from training.export import ExportError
from training.pipeline import PipelineConfig, PipelineError, bundle_path, run_pipeline

log = logging.getLogger("training")

EXIT_USER_ERROR = 2


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the data set files (default: download the official archive)",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, default="ml-100k", help="file format (default ml-100k)"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="u1",
        help="train/test split; 'none' trains on all data for a production bundle (default u1)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("models"),
        help="bundle folder; checkpoints go to OUT_DIR/.work (default models)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and few epochs (tests)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads, 0 = torch default (default 1)"
    )
    parser.add_argument(
        "--prune-ratio",
        type=float,
        default=None,
        help="share of the teacher's parameter count removed from the student (default 0.8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="torch device for training and evaluation; auto = CUDA when present (default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the ensemble teacher and the distilled student, export the bundle.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    steps = {
        "pipeline": (
            "bundle",
            "all steps: teacher, Fisher, student, export, evaluate, "
            "report, then publish models/<version> and switch models/current",
        ),
        "train-teacher": ("teacher", "train the ensemble teacher (checkpointed)"),
        "distill": ("student", "train the teacher if needed, then distil the pruned student"),
        "export": ("export", "export teacher, student and INT8 student to ONNX with parity"),
        "evaluate": ("evaluate", "protocol P metrics and latency of the exported models"),
        "report": ("report", "write the evaluation report of the run"),
    }
    for name, (step, text) in steps.items():
        command = sub.add_parser(name, help=text, description=text)
        _add_data_args(command)
        command.set_defaults(until=step)
    verify = sub.add_parser(
        "verify",
        help="check a bundle's files, hashes and models",
        description=("Checks a bundle: manifest schema, every file's sha256, ONNX signatures."),
    )
    verify.add_argument("bundle", type=Path, help="bundle folder, e.g. models/current")
    verify.set_defaults(until=None)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "verify":
        manifest = verify_bundle(args.bundle)
        summary = {
            "bundle": str(args.bundle.resolve()),
            "version": manifest["version"],
            "models": sorted(manifest["models"]),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0

    config = PipelineConfig(
        data_dir=args.data_dir,
        dataset=args.dataset,
        split=args.split,
        out_dir=args.out_dir,
        quick=args.quick,
        seed=args.seed,
        threads=args.threads,
        prune_ratio=args.prune_ratio,
        progress=not args.no_progress,
        device=args.device,
    )
    ctx = run_pipeline(config, until=args.until)
    if not current().is_main:
        return 0  # torchrun: rank 0 reports
    if args.until == "bundle":
        sys.stdout.write(f"{bundle_path(ctx)}\n")
    elif args.until == "evaluate":
        sys.stdout.write(json.dumps(ctx.state["evaluate"], indent=2) + "\n")
    elif args.until == "report":
        sys.stdout.write(f"{ctx.work / 'report.md'}\n")
    else:
        sys.stdout.write(f"{ctx.work}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prune_ratio = getattr(args, "prune_ratio", None)
    if prune_ratio is not None and not 0.0 <= prune_ratio < 1.0:
        parser.error(f"--prune-ratio must lie in [0, 1), got {prune_ratio}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except (DataError, BundleError, PipelineError, ExportError, DeviceError) as err:
        # User errors (bad data, a broken bundle, a bad option): the message, no traceback.
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; finished steps are checkpointed, re-run to resume\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
