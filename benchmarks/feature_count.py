"""How many features does a curve need? Runs the feature-count sweeps, draws the figures and prints
the summary table.

Usage::

    python benchmarks/feature_count.py            # quick sweeps (a few minutes on a laptop CPU)
    python benchmarks/feature_count.py --full     # the full grids (much longer)
    python benchmarks/feature_count.py --smoke    # tiny grids: checks every sweep and figure
    python benchmarks/feature_count.py --out DIR --figures DIR --sweeps oscillations tolerance

Results go to ``benchmarks/results/feature_count_<mode>/<sweep>.json`` (one file per sweep, saved
after every group of rows, with the machine recorded); an interrupted run resumes where it stopped.
Figures go to ``figures/``. A ``--smoke`` run writes its results and figures to temporary
directories unless ``--out`` and ``--figures`` are given, never into the repository's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jaxfeat.experiments.launch as launch
import jaxfeat.experiments.plots as plots
import jaxfeat.experiments.sweeps as sweeps

REPO = Path(__file__).resolve().parents[1]


def _spec(family: str, **kwargs: Any) -> tuple[tuple[str, Any], ...]:
    """A target spec as the sweeps store it: the family first, then the arguments by name."""
    return (("family", family), *sorted(kwargs.items()))


# Tiny sizes that still run every sweep (each job type, activation and figure once): loose
# tolerances and few feature counts, so each sweep is a round or two of fits; compiling the fits
# is what the run costs.
SMOKE = dataclasses.replace(
    sweeps.QUICK,
    mode="smoke",
    n=101,
    k_max=2,
    restarts=2,
    max_steps=10,
    polish_steps=10,
    batch=1,
    osc_m=(1,),
    osc_tols=(1e-1,),
    tol_m=(1,),
    tol_tols=(1e-1, 3e-2),
    vocab_sizes=(3,),
    vocab_n=101,
    vocab_tol=1e-1,
    enc_targets=(_spec("oscillating", m=1, n=101, vocab=3),),
    enc_tol=1e-1,
    example_tols=(1e-1,),
    fit_ks=(1, 2, 3, 8),
    fit_restarts=2,
    k_max_by_sweep=(),
)
PRESETS = {"quick": sweeps.QUICK, "full": sweeps.FULL, "smoke": SMOKE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full grids, not the quick ones")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny grids to check every sweep and figure (seconds to a minute); "
        "writes to temporary directories unless --out / --figures are given",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default benchmarks/results/feature_count_<mode>)",
    )
    parser.add_argument(
        "--figures", type=Path, default=None, help="figures directory (default figures/)"
    )
    parser.add_argument(
        "--sweeps",
        nargs="+",
        default=list(sweeps.SWEEPS),
        choices=sweeps.SWEEPS,
        metavar="SWEEP",
        help=f"sweeps to run (default all: {', '.join(sweeps.SWEEPS)})",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard existing results instead of resuming them"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    launch.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    try:
        procs = launch.start_distributed(args)
    except ValueError as err:
        parser.error(str(err))

    mode = "smoke" if args.smoke else "full" if args.full else "quick"
    settings = PRESETS[mode]
    if mode == "smoke":
        launch.require_shared_paths(parser, procs, args.out, args.figures)
    if mode == "smoke":
        out = args.out or Path(tempfile.mkdtemp(prefix="jaxfeat_feature_count_smoke_"))
        figures_dir = args.figures or Path(tempfile.mkdtemp(prefix="jaxfeat_figures_smoke_"))
    else:
        out = args.out or REPO / "benchmarks" / "results" / f"feature_count_{mode}"
        figures_dir = args.figures or REPO / "figures"
    start = time.perf_counter()
    sweeps.run_sweeps(
        out,
        settings,
        sweeps=args.sweeps,
        fresh=args.fresh,
        progress=not args.quiet,
        processes=procs,
    )
    sweep_seconds = time.perf_counter() - start
    if procs.index != 0:  # process 0 draws and reports
        return 0
    figures = [] if args.no_plots else plots.plot_all(out, figures_dir, settings.mode)
    print(sweeps.summarize(out))
    print(f"\nresults: {out}")
    for path in figures:
        print(f"figure:  {path}")
    print(f"wall time: sweeps {sweep_seconds:.0f} s, total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
