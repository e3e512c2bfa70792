"""How many features does a curve need? Runs the feature-count sweeps, draws the figures and prints
the summary table.

Usage::

    python benchmarks/feature_count.py            # quick sweeps (a few minutes on a laptop CPU)
    python benchmarks/feature_count.py --full     # the full grids (much longer)
    python benchmarks/feature_count.py --out DIR --figures DIR --sweeps oscillations tolerance

Results go to ``benchmarks/results/feature_count_<mode>/<sweep>.json`` (one file per sweep, saved
after every group of rows, with the machine recorded); an interrupted run resumes where it stopped.
Figures go to ``figures/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jaxfeat import _experiments, _plots

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full grids, not the quick ones")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default benchmarks/results/feature_count_<mode>)")
    parser.add_argument("--figures", type=Path, default=REPO / "figures",
                        help="figures directory (default figures/)")
    parser.add_argument("--sweeps", nargs="+", default=list(_experiments.SWEEPS),
                        choices=_experiments.SWEEPS, metavar="SWEEP",
                        help=f"sweeps to run (default all: {', '.join(_experiments.SWEEPS)})")
    parser.add_argument("--fresh", action="store_true",
                        help="discard existing results instead of resuming them")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    mode = "full" if args.full else "quick"
    out = args.out or REPO / "benchmarks" / "results" / f"feature_count_{mode}"
    start = time.perf_counter()
    _experiments.run_sweeps(out, mode, sweeps=args.sweeps, fresh=args.fresh,
                            progress=not args.quiet)
    sweep_seconds = time.perf_counter() - start
    figures = [] if args.no_plots else _plots.plot_all(out, args.figures)
    print(_experiments.summarize(out))
    print(f"\nresults: {out}")
    for path in figures:
        print(f"figure:  {path}")
    print(f"wall time: sweeps {sweep_seconds:.0f} s, total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
