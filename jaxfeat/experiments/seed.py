"""The seed's two worked examples: Figure 1 (HTML ``</p>``) and Figure 2 (temperature), refitted."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jaxfeat import FitResult, Target, fit_ks, probs, targets

TEMPERATURE_LEVELS = (8.0, 18.0, 28.0)


def seed_fits(restarts: int = 16, key: int = 0) -> dict[str, tuple[Target, list[FitResult], float]]:
    """Fits 1 and 2 ReLU features to the three seed targets.

    Returns:
      name -> (target, [1-feature fit, 2-feature fit], warm seconds for both fits).
    """
    out = {}
    for name, tgt in [
        ("html_closing_tag", targets.html_closing_tag()),
        ("temperature", targets.temperature()),
        ("temperature_nonmonotone", targets.temperature(nonmonotone=True)),
    ]:
        fit_ks(tgt, [1, 2], restarts=restarts, key=key)  # compile
        start = time.perf_counter()
        fits = fit_ks(tgt, [1, 2], restarts=restarts, key=key)
        fits[-1].mean_kl.block_until_ready()
        out[name] = (tgt, fits, time.perf_counter() - start)
    return out


def seed_table(results: dict[str, tuple[Target, list[FitResult], float]]) -> str:
    """A plain-text table of the seed fits: mean and max KL for k = 1, 2."""
    lines = [
        f"{'target':<26}{'k':>3}{'mean KL (nats)':>16}{'max KL (nats)':>15}{'converged':>11}",
        "-" * 71,
    ]
    for name, (_, fits, _) in results.items():
        for r in fits:
            lines.append(
                f"{name:<26}{int(r.k):>3}{float(r.mean_kl):>16.3e}{float(r.max_kl):>15.3e}"
                f"{bool(r.converged)!s:>11}"
            )
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def figure_html(results, path: Path) -> Path:
    """Figure 1: next-token distribution after ``</p>`` with the feature off and on."""
    tgt, fits, _ = results["html_closing_tag"]
    names = list(tgt.tokens)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, row, title in zip(
        axes, (0, 1), ("feature off (a = 0)", "feature on (a = 1)"), strict=True
    ):
        ax.bar(x, np.asarray(tgt.probs[row]), color="0.75", label="target")
        for r, marker, color in zip(fits, ("o", "x"), ("C0", "C3"), strict=True):
            q = np.asarray(probs(r.params, tgt.t))[row]
            ax.plot(
                x,
                q,
                marker,
                color=color,
                ms=8 if marker == "x" else 6,
                ls="none",
                label=f"{int(r.k)} fitted feature{'s' if int(r.k) > 1 else ''} "
                f"(mean KL {float(r.mean_kl):.0e} nats)",
            )
        ax.set_xticks(x, [repr(n) for n in names], fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("next token")
    axes[0].set_ylabel("probability")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        "Figure 1. Next token after an HTML </p>: one binary feature reproduces it exactly"
    )
    fig.tight_layout()
    _save(fig, path)
    return path


def figure_temperature(results, path: Path) -> Path:
    """Figure 2: P(cold, mild, hot) at three temperatures, target vs 1- and 2-feature fits."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharey=True)
    for row, name in enumerate(("temperature", "temperature_nonmonotone")):
        tgt, fits, _ = results[name]
        t = np.asarray(tgt.t)
        for col, level in enumerate(TEMPERATURE_LEVELS):
            i = int(np.argmin(np.abs(t - level)))
            ax = axes[row, col]
            x = np.arange(3)
            ax.bar(x, np.asarray(tgt.probs[i]), color="0.75", label="target")
            for r, marker, color in zip(fits, ("o", "x"), ("C0", "C3"), strict=True):
                q = np.asarray(probs(r.params, tgt.t))[i]
                ax.plot(
                    x,
                    q,
                    marker,
                    color=color,
                    ms=8,
                    ls="none",
                    label=f"{int(r.k)} feature{'s' if int(r.k) > 1 else ''} "
                    f"(mean KL {float(r.mean_kl):.1e})",
                )
            ax.set_xticks(x, tgt.tokens)
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 2.0)
            ax.set_title(
                f"{'monotone' if row == 0 else 'non-monotone'} target, t = {t[i]:.0f} °C",
                fontsize=10,
            )
            if col == 0:
                ax.set_ylabel("probability (log scale)")
            if row == 1:
                ax.set_xlabel("next token")
        axes[row, 2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(
        "Figure 2. Temperature feature at three temperatures: one feature matches the "
        "monotone target;\nthe non-monotone one (P(mild)/P(cold) rises then falls) needs two"
    )
    fig.tight_layout()
    _save(fig, path)
    return path
