"""Command line: `python -m training COMMAND ...` (also installed as `recsys-train`).

Every command that trains runs the resumable pipeline up to its step, so
`train-teacher`, then `distill`, then `pipeline` reuse each other's checkpoints.
A user error (bad option, bad data, a broken bundle) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from training.allocator import keep_freed_memory
from training.bundle import BundleError, verify_bundle
from training.cli_args import non_negative, path_arg, positive, seed, workers
from training.data import AUTO_SPLIT, DATASETS, SPLITS, DataError, default_split
from training.device import DEVICES, DeviceError
from training.distributed import current
from training.events import EventsError, add_events_parser, run_events
from training.export import ExportError
from training.pipeline import PipelineConfig, PipelineError, bundle_path, run_pipeline
from training.synth import SynthConfig, SynthError, generate
from training.towers import ANN_MIN_ITEMS

log = logging.getLogger("training")

EXIT_USER_ERROR = 2
EXIT_SYSTEM_ERROR = 1
# The commands that run the pipeline up to a step: an interrupted one resumes from its
# checkpoints. The others (synth, events, verify) replace their outputs whole or not at all.
RESUMABLE_COMMANDS = ("pipeline", "train-teacher", "distill", "export", "evaluate", "report")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `prog: error: message`."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=path_arg,
        default=None,
        help="folder with the data set files (default: download the official archive)",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, default="ml-100k", help="file format (default ml-100k)"
    )
    parser.add_argument(
        "--split",
        choices=(AUTO_SPLIT, *SPLITS),
        default=AUTO_SPLIT,
        help="train/test split; 'none' trains on all data for a production bundle "
        "(default auto: u1 for ml-100k, random otherwise)",
    )
    parser.add_argument(
        "--out-dir",
        type=path_arg,
        default=Path("models"),
        help="bundle folder; checkpoints go to OUT_DIR/.work (default models)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and few epochs (tests)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--threads",
        type=workers,
        default=0,
        help="torch CPU threads; 0 = one per teacher component process and every usable "
        "CPU (shared among torchrun's local ranks) in the other steps (default 0)",
    )
    parser.add_argument(
        "--jobs",
        type=workers,
        default=0,
        help="processes training the teacher's components side by side (on the CPU or "
        "one GPU); 0 = one per component as the CPUs allow on a CPU, 1 on a GPU and in "
        "--quick mode (default 0)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the teacher components' training steps (pays on large data)",
    )
    parser.add_argument(
        "--prune-ratio",
        type=float,
        default=None,
        help="share of the teacher's parameter count removed from the student (default 0.91)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only when stderr is a terminal, so that logs sent to a "
        "file or a collector do not fill with redrawn bars)",
    )
    parser.add_argument(
        "--ann-min-items",
        type=non_negative,
        default=ANN_MIN_ITEMS,
        help=f"ship an IVF index when the catalogue has more items (default {ANN_MIN_ITEMS})",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="torch device for training and evaluation; auto = CUDA when present (default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m training",
        description="Train the ensemble teacher and the distilled student, export the bundle.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; an error's traceback"
    )
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
    verify.add_argument("bundle", type=path_arg, help="bundle folder, e.g. models/current")
    verify.set_defaults(until=None)
    _add_synth(sub)
    add_events_parser(sub)
    return parser


def _add_synth(sub: argparse._SubParsersAction[_Parser]) -> None:
    text = "write synthetic ratings.csv and movies.csv (ml-latest format) with latent structure"
    synth = sub.add_parser("synth", help=text, description=text)
    synth.add_argument("--users", type=positive, required=True, help="number of users")
    synth.add_argument("--items", type=positive, required=True, help="number of items")
    synth.add_argument("--ratings", type=positive, required=True, help="number of ratings")
    synth.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    synth.add_argument("--out", type=path_arg, required=True, help="folder to write the files to")
    synth.set_defaults(until=None)


def show_progress(choice: bool | None, stream: TextIO) -> bool:
    """`--progress`/`--no-progress` when given, else bars only on a terminal."""
    return stream.isatty() if choice is None else choice


def _run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        synth = SynthConfig(
            n_users=args.users, n_items=args.items, n_ratings=args.ratings, seed=args.seed
        )
        generate(synth, args.out)
        sys.stdout.write(f"{args.out}\n")
        return 0
    if args.command == "verify":
        manifest = verify_bundle(args.bundle)
        summary = {
            "bundle": str(args.bundle.resolve()),
            "version": manifest["version"],
            "models": sorted(manifest["models"]),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0
    if args.command == "events":
        return run_events(args)

    config = PipelineConfig(
        data_dir=args.data_dir,
        dataset=args.dataset,
        split=default_split(args.dataset) if args.split == AUTO_SPLIT else args.split,
        out_dir=args.out_dir,
        quick=args.quick,
        seed=args.seed,
        threads=args.threads,
        jobs=args.jobs,
        compile=args.compile,
        prune_ratio=args.prune_ratio,
        progress=show_progress(args.progress, sys.stderr),
        ann_min_items=args.ann_min_items,
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
    for option in ("out_dir", "out"):
        folder = getattr(args, option, None)
        problem = _not_a_folder(folder) if folder is not None else None
        if problem:
            parser.error(f"--{option.replace('_', '-')} {folder}: {problem}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    keep_freed_memory()
    try:
        return _run(args)
    except (
        DataError,
        BundleError,
        PipelineError,
        ExportError,
        SynthError,
        EventsError,
        DeviceError,
    ) as err:
        # User errors (bad data, a broken bundle, a bad option): the message, no traceback.
        sys.stderr.write(f"error: {_one_line(err)}\n")
        return EXIT_USER_ERROR
    except ValueError as err:
        # The training library reports unusable inputs (too little data for a validation
        # split, a bad setting) as ValueError; -v adds the traceback for a bug report.
        log.debug("error", exc_info=True)
        sys.stderr.write(f"error: {_one_line(err)}\n")
        return EXIT_USER_ERROR
    except MemoryError:
        log.debug("out of memory", exc_info=True)
        sys.stderr.write("error: out of memory (smaller data or sizes, or a larger machine)\n")
        return EXIT_SYSTEM_ERROR
    except OSError as err:
        # The machine's side (permissions, a full disk): one line; -v adds the traceback.
        log.debug("system error", exc_info=True)
        sys.stderr.write(f"error: {_one_line(err)}\n")
        return EXIT_SYSTEM_ERROR
    except KeyboardInterrupt:
        resumable = args.command in RESUMABLE_COMMANDS
        sys.stderr.write(
            "interrupted; finished steps are checkpointed, re-run to resume\n"
            if resumable
            else "interrupted; nothing half-written is left in place\n"
        )
        return 130


def _not_a_folder(folder: Path) -> str | None:
    """Why `folder` cannot be (or be created as) a folder, or None."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else f"{path} is a file, not a folder"
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
