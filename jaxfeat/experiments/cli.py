"""The ``jaxfeat`` command: ``reproduce`` recomputes the sweeps and figures; ``count`` and ``fit``
analyse a curve of your own (see :mod:`jaxfeat.experiments.commands`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import commands, plots, sweeps, toy_models
from . import workers as _workers
from .launch import add_distributed_arguments, start_distributed
from .store import Processes, atomic_write_json, discard

# Where `jaxfeat reproduce` looks for the committed reference results, and where it computes.
REFERENCE_DIR = "benchmarks/results/feature_count_{mode}"
TOY_REFERENCE_DIR = "benchmarks/results/toy_models_{mode}"
RUN_DIR = "runs/reproduce_{mode}"
_MARKER = "run.json"


def reproduce(
    full: bool = False,
    *,
    out: str | Path | None = None,
    figures_dir: str | Path = "figures",
    reference: str | Path | None = None,
    reuse: bool = False,
    fresh: bool = False,
    progress: bool = True,
    settings: sweeps.Settings | None = None,
    counter: object = None,
    toy: bool = True,
    processes: Processes | None = None,
    workers: int | None = None,
) -> int:
    """Recomputes every sweep, draws every figure and compares the numbers with the reference.

    A run computes into ``out`` and marks it with ``run.json``. An interrupted run (the marker
    says ``"running"``) resumes; a finished one, or any other results there, is discarded and
    computed again, so what is reported is always computed by this run. At the end the fresh
    rows are compared with the committed reference results, row by row.

    Args:
      full: the full sweeps instead of the quick ones.
      out: directory of this run's results (default ``runs/reproduce_<mode>``).
      figures_dir: where the PNGs go.
      reference: the reference results (default ``benchmarks/results/feature_count_<mode>``).
      reuse: compute nothing: redraw the figures from the reference results.
      fresh: discard an interrupted run instead of resuming it.
      progress: progress bars on stderr.
      settings: sweep sizes other than the mode's preset (tests use tiny ones).
      counter: stand-in feature counter for :func:`jaxfeat.experiments.sweeps.run_sweeps`.
      toy: also train the toy models of :mod:`jaxfeat.experiments.toy_models` (the mode's
        preset, into ``out/toy_models``) and compare them with
        ``benchmarks/results/toy_models_<mode>``.
      processes: this process of a job of several (``Processes.from_jax()``): every process
        runs ``reproduce`` with the same arguments and computes its share of the rows; process 0
        keeps the marker, draws the figures and reports.
      workers: local worker processes that share the rows (:mod:`jaxfeat.experiments.workers`:
        one per core, taking the rows and then the toy models, one model at a time); ``None``:
        one per usable core for the mode's preset in a job of one process, else 1 (all in this
        process).

    Returns:
      The exit code: 0, or 1 when ``reuse`` finds no reference results.
    """
    start = time.perf_counter()
    procs = processes or Processes()
    lead = procs.index == 0
    preset = sweeps.PRESETS["full" if full else "quick"]
    settings = settings or preset
    toy_settings = toy_models.FULL if full else toy_models.QUICK
    mode = settings.mode
    if workers is None:
        workers = (
            _workers.default_count()
            if procs.count == 1 and counter is None and settings == preset
            else 1
        )
    elif not isinstance(workers, int) or workers < 1 or (workers > 1 and procs.count > 1):
        raise ValueError(
            f"workers={workers!r} must be an int >= 1, and 1 in a job of several processes "
            f"(this one has {procs.count})."
        )
    ref = Path(reference or REFERENCE_DIR.format(mode=mode))
    figs = Path(figures_dir)
    if reuse:
        if not lead:
            return 0
        if not any(sweeps.read_rows(ref, s) for s in sweeps.SWEEPS):
            print(f"jaxfeat reproduce --reuse: no results in {ref}", file=sys.stderr)
            return 1
        print(f"jaxfeat reproduce --reuse: NOTHING IS RECOMPUTED; figures drawn from {ref}")
        print(sweeps.summarize(ref).text)
        paths = plots.plot_all(ref, figs, mode)
        toy_ref = Path(TOY_REFERENCE_DIR.format(mode=mode))
        if toy and (toy_ref / "neurons.json").exists():
            paths += toy_models.figures(toy_settings, toy_ref, figs)
        _report_figures(paths)
        return 0
    run = Path(out or RUN_DIR.format(mode=mode))
    # Read before computing: `out` may be the reference directory itself.
    before = {s: sweeps.read_rows(ref, s) for s in sweeps.SWEEPS}
    marker = load_marker(run)
    resume = (
        not fresh
        and marker is not None
        and marker.get("status") == "running"
        and (marker.get("mode") == mode)
    )
    # Every process decides from the marker as it was, before process 0 rewrites it.
    procs.wait("reproduce: marker read")
    toy_out = run / toy_models.IN_RUN
    if lead:
        if not resume:
            for sweep in sweeps.SWEEPS:
                discard(sweeps.results_path(run, sweep))
            for sweep in toy_models.SWEEPS:
                discard(toy_out / f"{sweep}.json")
            (toy_out / toy_models.EXAMPLE_RECORD).unlink(missing_ok=True)
        atomic_write_json(
            run / _MARKER, {"mode": mode, "status": "running", "started": time.time()}
        )
        print(
            f"jaxfeat reproduce ({mode} mode): "
            f"{'resuming the interrupted run' if resume else 'a new run'}"
            f" in {run}" + (f", {procs.count} processes" if procs.count > 1 else ""),
            flush=True,
        )
    procs.wait("reproduce: started")
    if workers > 1:
        _workers.reset(run)
        print(
            f"{workers} worker processes, one per core, take the rows"
            + (" and the trained toy models" if toy else "")
            + f"; logs in {run / _workers.LOGS}",
            flush=True,
        )
        _workers.wait(_workers.start(run, workers, settings, toy=toy), run)
        merge_toy = toy_settings if toy else None
        _workers.merge(run, workers, settings, toy=merge_toy, counter=counter)
    else:
        sweeps.run_sweeps(run, settings, counter=counter, progress=progress, processes=procs)
        if toy:
            if lead:
                print("trained toy models (jaxfeat.experiments.toy_models)", flush=True)
            toy_models.compute(toy_settings, toy_out, processes=procs)
    toy_figures = []
    if toy:
        missing = [s for s in toy_models.SWEEPS if not (toy_out / f"{s}.json").exists()]
        if missing:
            raise RuntimeError(f"no toy-model results for {missing} in {toy_out}.")
        if lead:
            toy_figures = toy_models.figures(toy_settings, toy_out, figs)
    if not lead:
        return 0
    atomic_write_json(
        run / _MARKER, {"mode": mode, "status": "done", "seconds": time.perf_counter() - start}
    )
    print(sweeps.summarize(run).text, flush=True)
    _report_figures(plots.plot_all(run, figs, mode))
    after = {s: sweeps.read_rows(run, s) for s in sweeps.SWEEPS}
    print("\n" + sweeps.compare(before, after, name=f"reference in {ref}"))
    if toy:
        _report_figures(toy_figures)
        toy_ref = Path(TOY_REFERENCE_DIR.format(mode=mode))
        print(f"\n== Trained toy models against the reference in {toy_ref} ==")
        print(toy_models.compare(toy_ref, toy_out))
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")
    return 0


def load_marker(run: str | Path) -> dict | None:
    """The run marker of a ``reproduce`` directory, or ``None``."""
    try:
        return json.loads((Path(run) / _MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _report_figures(paths: Sequence[Path]) -> None:
    print("\nFigures:\n" + "\n".join(f"  {p}" for p in paths))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxfeat`` command.

    Example:
      >>> main(["reproduce", "--reuse", "--reference", "no/such/dir"])
      1
    """
    parser = argparse.ArgumentParser(prog="jaxfeat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "reproduce",
        help="recompute the sweeps and figures; compare with the committed reference results",
    )
    rep.add_argument("--full", action="store_true", help="complete sweeps (slow) instead of quick")
    rep.add_argument("--out", default=None, help=f"this run's results (default {RUN_DIR})")
    rep.add_argument("--figures-dir", default="figures", help="where the PNGs go (figures/)")
    rep.add_argument(
        "--reference",
        default=None,
        help=f"reference results to compare with (default {REFERENCE_DIR})",
    )
    rep.add_argument(
        "--reuse",
        action="store_true",
        help="recompute nothing: redraw the figures from the reference results",
    )
    rep.add_argument("--fresh", action="store_true", help="discard an interrupted run")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.add_argument("--no-toy", action="store_true", help="skip the trained toy models")
    rep.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes sharing the rows (default: one per usable core, at most "
        f"{_workers.MAX_WORKERS}; 1 computes in this process)",
    )
    add_distributed_arguments(rep)
    commands.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        try:
            procs = start_distributed(args)
        except ValueError as err:
            parser.error(str(err))
        return reproduce(
            args.full,
            out=args.out,
            figures_dir=args.figures_dir,
            reference=args.reference,
            reuse=args.reuse,
            fresh=args.fresh,
            progress=not args.quiet,
            toy=not args.no_toy,
            processes=procs,
            workers=args.workers,
        )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
