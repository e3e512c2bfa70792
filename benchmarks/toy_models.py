"""Trained toy models against the bracket (the sweeps live in ``jaxfeat.experiments.toy_models``).

Usage::

    python benchmarks/toy_models.py             # quick: 3 targets, 1 seed (about 5.5 minutes)
    python benchmarks/toy_models.py --full      # every target, 3 seeds, more widths and SAEs
    python benchmarks/toy_models.py --smoke     # tiny sizes, to a temporary directory

Results (resumable) go to ``benchmarks/results/toy_models_<mode>/``, figures to ``figures/``.
"""

from __future__ import annotations

from pathlib import Path

from jaxfeat.experiments.toy_models import main as run

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> Path:
    return run(argv, repo=REPO)


if __name__ == "__main__":
    main()
