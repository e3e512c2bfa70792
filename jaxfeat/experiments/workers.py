"""Local worker processes for ``jaxfeat reproduce``: one per core, taking the run's rows as they go.

JAX's CPU runtime gains little from a second core on these small fits (the quick
``oscillating(7)`` count: 44 s on one core, 39 s on two, for 1.5 times the CPU time), so on one
machine the run goes faster as one process per core, each pinned to its core(s), than as one
process spread over all of them. Each worker claims rows in order (:func:`~.store.claim`) and
computes those it is first to claim, so a long row never leaves the other cores idle; then,
the same way, the trained toy models, one claim per model (the sweeps' long rows first, the
toy models' short units after, so that the workers finish together). A worker writes its rows
to part files of its own (``ResultsStore`` process ``index + 1``); the caller, process 0,
merges them once every worker has exited.

Usage (what :func:`start` runs)::

    python -m jaxfeat.experiments.workers --run runs/reproduce_quick --index 0 --count 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import sweeps, toy_models
from .store import Processes

CLAIMS = "claims"  # the claim files, in the run directory
LOGS = "workers"  # worker-<i>.log, in the run directory
# Each worker holds a JAX process (about 1 to 2 GB in the quick run): more rarely pay.
MAX_WORKERS = 8


def usable_cores() -> list[int]:
    """The cores this process may run on (all of ``os.cpu_count()`` where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_count() -> int:
    """Workers for this machine: one per usable core, at most :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, len(usable_cores())))


def pin(index: int, count: int) -> None:
    """Keeps this process on its share of the cores: every ``count``-th from the ``index``-th.

    Must run before JAX's first computation, which sizes its thread pool from the cores it may
    use. Where the platform cannot pin (``os.sched_setaffinity`` is Linux only) it does nothing,
    and the workers share the cores as the OS schedules them.
    """
    cores = usable_cores()
    if hasattr(os, "sched_setaffinity") and count <= len(cores):
        os.sched_setaffinity(0, cores[index::count])


def reset(run: str | Path) -> None:
    """Removes the run's claims; call it before starting workers, when none is running."""
    shutil.rmtree(Path(run) / CLAIMS, ignore_errors=True)


def work(
    run: str | Path,
    index: int,
    count: int,
    settings: sweeps.Settings,
    *,
    toy: toy_models.Settings | None = None,
    counter: Any = None,
    progress: bool = False,
) -> None:
    """One worker's share of a run: every sweep row it claims first, then every toy model it
    claims first, into its own part files in ``run``.

    Args:
      run: the run directory (results files, ``claims/``).
      index: this worker, 0 to ``count - 1``.
      count: workers in the run.
      settings: the sweeps' sizes.
      toy: the toy models' sizes, into ``run/toy_models``; ``None`` trains none.
      counter: stand-in feature counter (tests).
      progress: progress bars on stderr.

    Example:
      Two workers in one process, one after the other (the second finds every row claimed, so
      it computes nothing); the caller then merges the parts::

          work("runs/demo", 0, 2, sweeps.QUICK)
          work("runs/demo", 1, 2, sweeps.QUICK)
          merge("runs/demo", 2, sweeps.QUICK)
    """
    claims = Path(run) / CLAIMS
    # Process 0 is the caller, which merges: only it may clean a results file's temporary files.
    procs = Processes(index + 1, count + 1, barrier=lambda name: None)
    sweeps.run_sweeps(
        run, settings, counter=counter, progress=progress, processes=procs, claims=claims
    )
    if toy is not None:
        toy_models.compute(toy, Path(run) / toy_models.IN_RUN, processes=procs, claims=claims)


def merge(
    run: str | Path,
    count: int,
    settings: sweeps.Settings,
    *,
    toy: toy_models.Settings | None = None,
    counter: Any = None,
) -> None:
    """After the workers have exited: writes each sweep's one file from their parts, with the
    rows they left to another sweep's identical row copied (``copied_from``), and each toy-model
    sweep's file if ``toy``. A row no worker claimed (none, after a run whose workers all
    succeeded) is computed here."""
    procs = Processes(0, count + 1, barrier=lambda name: None)
    claims = Path(run) / CLAIMS
    sweeps.run_sweeps(
        run, settings, counter=counter, progress=False, processes=procs, claims=claims
    )
    if toy is not None:
        toy_models.compute(toy, Path(run) / toy_models.IN_RUN, processes=procs, claims=claims)


def start(
    run: str | Path, count: int, settings: sweeps.Settings, *, toy: bool
) -> list[subprocess.Popen]:
    """Starts ``count`` workers (``python -m jaxfeat.experiments.workers``) on the preset
    ``settings`` (and the toy models' preset of its mode, if ``toy``); worker ``i`` logs to
    ``run/workers/worker-<i>.log``.

    Raises:
      ValueError: if ``settings`` is not one of :data:`jaxfeat.experiments.sweeps.PRESETS`
        (a worker process knows the presets only).
    """
    if sweeps.PRESETS.get(settings.mode) != settings:
        raise ValueError(
            "settings must be a preset (sweeps.QUICK or sweeps.FULL) for worker processes; "
            "run other settings in this process (workers=1)."
        )
    (Path(run) / LOGS).mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(count):
        cmd = [sys.executable, "-m", "jaxfeat.experiments.workers", "--run", str(run)]
        cmd += ["--index", str(i), "--count", str(count)]
        cmd += (["--full"] if settings.mode == "full" else []) + ([] if toy else ["--no-toy"])
        with open(log_path(run, i), "w", encoding="utf-8") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    return procs


def log_path(run: str | Path, index: int) -> Path:
    return Path(run) / LOGS / f"worker-{index}.log"


def wait(procs: Sequence[subprocess.Popen], run: str | Path) -> None:
    """Waits for every worker; if one fails, stops the others and raises with its log's end."""
    try:
        for i, proc in enumerate(procs):
            if proc.wait() != 0:
                log = log_path(run, i)
                tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
                raise RuntimeError(
                    f"worker {i} failed (exit code {proc.returncode}); {log}:\n{tail}"
                )
    except BaseException:
        for proc in procs:
            proc.kill()  # rows are saved atomically as they finish: a rerun resumes them
        raise


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run directory")
    parser.add_argument("--index", type=int, required=True, help="this worker, 0 to count - 1")
    parser.add_argument("--count", type=int, required=True, help="workers in the run")
    parser.add_argument("--full", action="store_true", help="the full presets")
    parser.add_argument("--no-toy", action="store_true", help="train no toy models")
    args = parser.parse_args(argv)
    if not 0 <= args.index < args.count:
        parser.error(f"--index {args.index} must be from 0 to --count - 1 = {args.count - 1}")
    pin(args.index, args.count)
    mode = "full" if args.full else "quick"
    toy = None if args.no_toy else (toy_models.FULL if args.full else toy_models.QUICK)
    work(args.run, args.index, args.count, sweeps.PRESETS[mode], toy=toy)


if __name__ == "__main__":
    main()
