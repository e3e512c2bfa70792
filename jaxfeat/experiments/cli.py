"""Command line: ``jaxfeat reproduce`` writes the figures and benchmark tables."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def reproduce(
    full: bool = False,
    figures_dir: str = "figures",
    results_dir: str = "benchmarks/results",
    fresh: bool = False,
) -> int:
    """Runs the seed's examples and the feature-count sweeps, then draws every figure.

    Sweeps resume from the results files already in ``results_dir`` unless ``fresh`` is set.
    """
    from . import plots, seed, sweeps

    start = time.perf_counter()
    mode = "full" if full else "quick"
    figs = Path(figures_dir)
    res = Path(results_dir or f"benchmarks/results/feature_count_{mode}")
    print("jaxfeat reproduce: the seed's examples (1 and 2 ReLU features)", flush=True)
    seed = seed.seed_fits()
    print(seed.seed_table(seed), flush=True)
    written = [
        seed.figure_html(seed, figs / "fig1_html_closing_tag.png"),
        seed.figure_temperature(seed, figs / "fig2_temperature.png"),
    ]
    print(f"\nFeature-count sweeps ({mode} mode; results in {res})", flush=True)
    sweeps.run_sweeps(res, mode, fresh=fresh)
    summary = sweeps.summarize(res)
    print(summary.text, flush=True)
    written += plots.plot_all(res, figs)
    print("\nFigures:\n" + "\n".join(f"  {p}" for p in written))
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxfeat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="write the figures and benchmark tables")
    rep.add_argument("--full", action="store_true", help="complete sweeps (slow) instead of quick")
    rep.add_argument("--figures-dir", default="figures")
    rep.add_argument("--results-dir", default=None,
                     help="default: benchmarks/results/feature_count_{quick,full}")
    rep.add_argument("--fresh", action="store_true", help="ignore existing results, start again")
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        return reproduce(args.full, args.figures_dir, args.results_dir, args.fresh)
    return 2


if __name__ == "__main__":
    sys.exit(main())
