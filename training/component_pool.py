"""The teacher's components trained side by side, one process each.

The three components share nothing until the blend is fitted, and on a CPU one small
model's batches do not keep several cores busy (intra-op threads gain little at these
sizes), so a process per component is the cheap way to use a machine's cores: the
teacher step takes about the sum of the components' CPU time over the cores.
On one GPU the processes can pay for another reason (`--jobs N`; auto trains in turn
there until a lent GPU has timed both, bench/gpu.sh): a step of these small models waits
on its host (Python, kernel launches, the synchronisations of data-dependent shapes; about
10 ms a step whatever the batch, docs/SCALE.md), so the device idles most of the time,
and a process per component, each driving the same GPU, would fill it.
torchrun's data parallelism (training/distributed.py) is the way across machines; inside
a torchrun rank components run one by one.

Each child trains exactly what `train_component` trains in this process (same seed, same
thread count), so the models are identical whichever way they were trained. A refit runs
each head apart (`Refit`), so the two heads of one component train side by side too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from training.allocator import keep_freed_memory

if TYPE_CHECKING:
    from collections.abc import Sequence

    from training.data import Ratings
    from training.features import FeatureMap, FeatureTables
    from training.models.configs import ComponentConfig, Head
    from training.models.layers import TowerScoring

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentTask:
    """The arguments of one `train.train_component` call."""

    name: str
    config: ComponentConfig
    seed: int
    valid: Ratings | None = None
    head_epochs: tuple[int, int] | None = None
    head: Head | None = None  # a refit of this head alone; None: both heads


# `train.train_component` and `train.build_component`, passed in rather than imported:
# train.py uses this module, and a spawned child unpickles them by name.
TrainFn = Callable[..., "tuple[TowerScoring, dict[str, Any]]"]
BuildFn = Callable[..., "TowerScoring"]


@dataclass(frozen=True)
class SharedInputs:
    """What every component of one teacher trains on, and how."""

    fm: FeatureMap
    tables: FeatureTables
    train: Ratings
    progress: bool
    threads: int
    compile_step: bool
    train_fn: TrainFn
    build_fn: BuildFn


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def rank_cpus() -> int:
    """This process's share of the usable CPUs: all of them, or an equal part per local
    rank under torchrun (LOCAL_WORLD_SIZE)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, usable_cpus() // max(local_ranks, 1))


def resolve_jobs(jobs: int, *, threads: int, tasks: int) -> int:
    """`jobs` = 0 (auto): a process per task where the CPUs hold at least two processes
    at `threads` each, else one.

    Even beyond the CPUs: with fewer processes than components, the last component trains
    alone while the other cores idle (three on two cores: the third one's whole run),
    whereas three processes share two cores until all are done.
    """
    if jobs > 0:
        return min(jobs, tasks)
    per_process = threads if threads > 0 else usable_cpus()  # 0: torch takes every core
    return tasks if usable_cpus() // per_process >= 2 else 1


@dataclass(frozen=True)
class Refit:
    """Second runs of every component on other data (all training ratings), repeating
    what its first run selected: `tasks_for(first task, its info)`, a task per head (the
    heads share no parameters, so each head's run stops at its own epoch)."""

    shared: SharedInputs
    tasks_for: Callable[[ComponentTask, dict[str, Any]], list[ComponentTask]]


Trained = tuple["TowerScoring", dict[str, Any]]
# One component's refit: each head's run with the task that made it.
Refitted = list[tuple[ComponentTask, "TowerScoring", dict[str, Any]]]


def train_components(
    tasks: Sequence[ComponentTask],
    shared: SharedInputs,
    *,
    jobs: int,
    device: torch.device,
    refit: Refit | None = None,
) -> tuple[list[Trained], list[Refitted]]:
    """Each task's trained model and training info, in the order of `tasks`, and per task
    its refit's runs (none without a refit).

    In a pool, a component's refit runs start as soon as its own first run is done, rather
    than after the slowest first run, and run side by side: no core waits for another.
    """
    if jobs <= 1 or len(tasks) <= 1:
        return _in_turn(tasks, shared, device=device, refit=refit)
    log.info("training %d components in %d processes on %s", len(tasks), jobs, device)
    done = _pooled(tasks, shared, jobs=jobs, refit=refit, device=device)
    first: list[Trained] = []
    second: list[Refitted] = [[] for _ in tasks]
    for (k, run), (task, (state, info)) in sorted(done.items()):
        if run < 0:
            first.append((_rebuild(task, shared, state, device=device), info))
        elif refit is not None:
            second[k].append((task, _rebuild(task, refit.shared, state, device=device), info))
    return first, second


def _in_turn(
    tasks: Sequence[ComponentTask],
    shared: SharedInputs,
    *,
    device: torch.device,
    refit: Refit | None,
) -> tuple[list[Trained], list[Refitted]]:
    first = [_train(task, shared, device=device) for task in tasks]
    second: list[Refitted] = [[] for _ in tasks]
    if refit is not None:
        for runs, task, (_, info) in zip(second, tasks, first, strict=True):
            for again in refit.tasks_for(task, info):
                runs.append((again, *_train(again, refit.shared, device=device)))
    return first, second


# (component, run): run -1 is the first run, 0.. its refit's runs; each with its task and
# what the child sent back (the weights and the training info).
Done = dict[tuple[int, int], tuple[ComponentTask, tuple[dict[str, torch.Tensor], dict[str, Any]]]]


def _pooled(
    tasks: Sequence[ComponentTask],
    shared: SharedInputs,
    *,
    jobs: int,
    refit: Refit | None,
    device: torch.device,
) -> Done:
    done: Done = {}
    with worker_pool(jobs, threads=shared.threads) as pool:
        pending: dict[Future[Any], tuple[int, int, ComponentTask]] = {
            pool.submit(_train_state, task, shared, str(device)): (k, -1, task)
            for k, task in enumerate(tasks)
        }
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    k, run, task = pending.pop(future)
                    done[(k, run)] = (task, future.result())
                    if run == -1 and refit is not None:
                        for j, again in enumerate(refit.tasks_for(task, done[(k, run)][1][1])):
                            child = pool.submit(_train_state, again, refit.shared, str(device))
                            pending[child] = (k, j, again)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return done


def worker_pool(jobs: int, *, threads: int) -> ProcessPoolExecutor:
    """Worker processes with this process's log level and `threads` torch threads each,
    which end when this process does, however it ends."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        # spawn, not fork: the parent may hold torch's thread pools and open files.
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_child,
        initargs=(logging.getLogger().getEffectiveLevel(), threads, os.getpid()),
    )


def _init_child(level: int, threads: int, parent: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s[%(process)d]: %(message)s")
    keep_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Ends this worker once `parent` is gone. A parent killed by a signal (SIGTERM from a
    supervisor, the OOM killer) runs no clean-up, and its workers would otherwise train on
    for many minutes, holding the cores and memory of whatever runs next."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def _train(
    task: ComponentTask, shared: SharedInputs, *, device: torch.device
) -> tuple[TowerScoring, dict[str, Any]]:
    return shared.train_fn(
        task.name,
        shared.fm,
        shared.tables,
        shared.train,
        config=task.config,
        valid=task.valid,
        head_epochs=task.head_epochs,
        seed=task.seed,
        progress=shared.progress,
        device=device,
        compile_step=shared.compile_step,
    )


def _train_state(
    task: ComponentTask, shared: SharedInputs, device: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """In the child: train on `device` and send back the weights, as CPU tensors: a CUDA
    tensor would cross as an IPC handle valid only while this process keeps it."""
    model, info = _train(task, shared, device=torch.device(device))
    return {k: v.cpu() for k, v in model.state_dict().items()}, info


def _rebuild(
    task: ComponentTask,
    shared: SharedInputs,
    state: dict[str, torch.Tensor],
    *,
    device: torch.device,
) -> TowerScoring:
    """The child's model in this process, on `device` as `_in_turn` leaves it."""
    model = shared.build_fn(
        task.name, shared.fm, task.config, global_mean=float(shared.train.rating.mean())
    )
    model.load_state_dict(state)
    return model.to(device).eval()
