"""Figures of the feature-count sweeps, drawn from the results files alone.

Each ``*_figure`` function builds a :class:`matplotlib.figure.Figure` from result rows (so tests can
inspect its axes), and each ``plot_*`` function reads a results directory, builds the figure and
saves it as a PNG. Figures are created without pyplot: they render with Agg whatever backend the
user has selected, and nothing stays registered in pyplot's figure manager.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .store import atomic_write
from .sweeps import (
    SEED_SPECS,
    THEORY_TOL_SLOPE,
    UNCONSTRAINED,
    k_per_m_stats,
    loglog_slope,
    make_target,
    read_rows,
)

DPI = 130
Rows = Sequence[Mapping[str, Any]]
FIGURES = {
    "oscillations": "feature_count_oscillations.png",
    "tolerance": "feature_count_tolerance.png",
    "vocabulary": "feature_count_vocabulary.png",
    "encoders": "feature_count_encoders.png",
    "temperature": "temperature_fits.png",
    "coupled": "coupled_features.png",
    "html": "fig1_html_closing_tag.png",
    "seed_temperature": "fig2_temperature.png",
}
# Temperatures at which Figure 2 shows the distributions (°C).
TEMPERATURE_LEVELS = (8.0, 18.0, 28.0)
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_KL = "mean KL, nats"


def save(fig: Figure, path: str | Path) -> Path:
    """Saves a figure atomically: PNG unless the suffix names another format.

    PNGs carry no software version stamp, so the same figure gives the same bytes.

    Args:
      fig: the figure.
      path: destination (its directory is created).

    Returns:
      The path written.

    Example:
      >>> import pathlib, tempfile
      >>> save(Figure(), pathlib.Path(tempfile.mkdtemp()) / "empty.png").read_bytes()[:4]
      b'\\x89PNG'
    """
    fmt = Path(path).suffix[1:].lower() or "png"
    meta = {"metadata": {"Software": None}} if fmt == "png" else {}
    return atomic_write(
        path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", **meta)
    )


def _counted(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(mask of rows whose k was found, k with censored rows set to k_max)."""
    found = np.array([r.get("k") is not None for r in rows], bool)
    k = np.array(
        [r["k"] if r.get("k") is not None else r.get("k_max", np.nan) for r in rows], float
    )
    return found, k


def _field(rows: Rows, name: str) -> np.ndarray:
    return np.array([np.nan if r.get(name) is None else r[name] for r in rows], float)


_STYLES = {
    "bracket": {"marker": "none", "ls": "-", "lw": 7, "alpha": 0.25, "solid_capstyle": "butt"},
    "k": {"marker": "o", "ls": "-", "ms": 6, "lw": 1.5},
    "censored": {"marker": "^", "ls": "none", "ms": 9, "mfc": "none", "mew": 1.5},
    "lower_bound": {"marker": "v", "ls": "--", "ms": 6, "lw": 1, "mfc": "white"},
    "predicted": {"marker": "none", "ls": ":", "lw": 2},
}
_STYLE_LABELS = {
    "bracket": "open bracket: the true count lies in [bound, fitted k]",
    "k": "fitted k (smallest k whose best fit reaches tol)",
    "censored": "not reached up to k_max (drawn at k_max)",
    "lower_bound": "certified lower bound (segmentation; continuity for ReLU)",
    "predicted": "approximation theory N(tol)",
}


def _draw_counts(ax: Any, x: np.ndarray, rows: Rows, color: str) -> set[str]:
    """Achieved k (censored rows as open up-triangles at k_max), certified bound, theory curve.

    Where the bracket is open (bound < k) a translucent bar spans it: the true count is somewhere
    in that range, not at the fitted point.

    Returns:
      The kinds of marks drawn, for :func:`_style_legend`.
    """
    order = np.argsort(x)
    x, rows = x[order], [rows[i] for i in order]
    found, k = _counted(rows)
    drawn = set()
    lb = _field(rows, "lower_bound")
    open_ = found & np.isfinite(lb) & (lb < k)
    for xi, lo, hi in zip(x[open_], lb[open_], k[open_], strict=True):
        ax.plot([xi, xi], [lo, hi], color=color, **_STYLES["bracket"])
        drawn.add("bracket")
    if found.any():
        ax.plot(x[found], k[found], color=color, **_STYLES["k"])
        drawn.add("k")
    if (~found).any():
        ax.plot(x[~found], k[~found], color=color, **_STYLES["censored"])
        drawn.add("censored")
    for name in ("lower_bound", "predicted"):
        y = _field(rows, name)
        if np.isfinite(y).any():
            ax.plot(x, y, color=color, **_STYLES[name])
            drawn.add(name)
    return drawn


def _style_legend(ax: Any, drawn: set[str], loc: str, extra: Sequence[Line2D] = ()) -> None:
    handles = [
        Line2D([], [], color="0.2", label=_STYLE_LABELS[n], **_STYLES[n])
        for n in _STYLES
        if n in drawn
    ]
    ax.add_artist(ax.legend(handles=[*handles, *extra], fontsize=7.5, loc=loc))


def _color_legend(ax: Any, entries: Sequence[tuple[str, str]], loc: str, title: str) -> None:
    handles = [Line2D([], [], color=c, lw=6, label=lab) for c, lab in entries]
    ax.legend(handles=handles, fontsize=7.5, loc=loc, title=title, title_fontsize=8)


def _int_log_ticks(ax: Any, values: np.ndarray) -> None:
    """Plain integer ticks on a log-scaled y axis (no 3x10^1 labels)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    lo, hi = np.nanmin(values), np.nanmax(values)
    nice = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    ticks = [v for v in nice if lo / 1.2 <= v <= hi * 1.2]

    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


# ---------------------------------------------------------------------------------------------
# (a) oscillations


def oscillations_figure(rows: Rows) -> Figure:
    """Required k against the oscillation count m: certified bound, fitted k and theory.

    Args:
      rows: rows of the ``oscillations`` sweep.
    """
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    tols = sorted({r["tol"] for r in rows}, reverse=True)
    stats = k_per_m_stats(rows)
    drawn: set[str] = set()
    entries = []
    for i, tol in enumerate(tols):
        sub = [r for r in rows if r["tol"] == tol]
        m = np.array([r["target"]["m"] for r in sub], float)
        color = _COLORS[i % len(_COLORS)]
        drawn |= _draw_counts(ax, m, sub, color)
        ratio = ""
        if tol in stats:
            ratio = f": k/m = {stats[tol]['mean']:.1f} ± {stats[tol]['std']:.1f}"
        entries.append((color, f"mean KL ≤ {tol:g} nats{ratio}"))
    _style_legend(ax, drawn, "upper left")
    _color_legend(ax, entries, "lower right", "tolerance")
    ax.set_xlabel("oscillations m of the logits on t ∈ [0, 1]")
    ax.set_ylabel("features k (ReLU encoders)")
    ax.set_title(
        "Features needed for logits that oscillate m times (theory: k ∝ m)\n"
        "target oscillating(m): logits (0, 3 sin 2πmt, 2 cos 2πmt)",
        fontsize=10.5,
    )
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------
# (b) tolerance


def tolerance_figure(rows: Rows) -> Figure:
    """Required k against the tolerance on log-log axes, with the theory slope -1/4.

    Args:
      rows: rows of the ``tolerance`` sweep.
    """
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ms = sorted({r["target"]["m"] for r in rows})
    drawn: set[str] = set()
    entries = []
    for i, m in enumerate(ms):
        sub = [r for r in rows if r["target"]["m"] == m]
        tol = np.array([r["tol"] for r in sub], float)
        color = _COLORS[i % len(_COLORS)]
        drawn |= _draw_counts(ax, tol, sub, color)
        ok = [r for r in sub if r.get("k") is not None]
        fit = loglog_slope([r["tol"] for r in ok], [r["k"] for r in ok])
        slope = "" if fit["slope"] is None else f": fitted slope {fit['slope']:.2f}"
        entries.append((color, f"oscillating(m={m}){slope}"))
    ref = []
    found = [r for r in rows if r.get("k") is not None]
    if found:
        # The theory's slope, drawn through the geometric centre of the fitted counts.
        tol = np.array([r["tol"] for r in rows], float)
        x = np.geomspace(tol.min(), tol.max(), 20)
        x0 = np.exp(np.mean(np.log([r["tol"] for r in found])))
        y0 = np.exp(np.mean(np.log([r["k"] for r in found])))
        ax.plot(x, y0 * (x / x0) ** THEORY_TOL_SLOPE, "-", color="0.4", lw=1)
        ref = [Line2D([], [], color="0.4", lw=1, label="slope −1/4 (theory), for reference")]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    _int_log_ticks(ax, np.concatenate([_counted(rows)[1], _field(rows, "lower_bound")]))
    _style_legend(ax, drawn, "upper left", ref)
    _color_legend(ax, entries, "lower right", "target")
    ax.set_xlabel(f"tolerance on the {_KL} (log scale; stricter to the right)")
    ax.set_ylabel("features k (ReLU encoders, log scale)")
    ax.set_title("Features needed vs tolerance: theory predicts k ∝ tol^(−1/4)")
    ax.grid(alpha=0.3, which="both")
    return fig


# ---------------------------------------------------------------------------------------------
# (c) vocabulary


def vocabulary_figure(rows: Rows) -> Figure:
    """Required k against the vocabulary size V, per target family, with the affine rank.

    Args:
      rows: rows of the ``vocabulary`` sweep.
    """
    families = sorted({r["target"]["family"] for r in rows}, reverse=True)
    fig = Figure(figsize=(5.6 * max(len(families), 1), 5.0), layout="constrained")
    axes = fig.subplots(1, max(len(families), 1), squeeze=False)[0]
    names = {
        "tuning_curves": "tuning curves (Gaussian logit bumps)",
        "random_smooth": "random smooth (Fourier) logits",
    }
    for ax, fam in zip(axes, families, strict=False):
        sub = sorted((r for r in rows if r["target"]["family"] == fam), key=lambda r: r["V"])
        V = np.array([r["V"] for r in sub], float)
        drawn = _draw_counts(ax, V, sub, _COLORS[0])
        rank = _field(sub, "affine_rank")
        ax.plot(V, rank, "s-", color=_COLORS[2], ms=5, lw=1.2)
        ax.plot(V, V - 1, color="0.5", lw=1, ls="-.")
        _style_legend(
            ax,
            drawn,
            "upper left",
            [
                Line2D(
                    [],
                    [],
                    color=_COLORS[2],
                    marker="s",
                    ms=5,
                    lw=1.2,
                    label="unconstrained encoders: affine rank",
                ),
                Line2D(
                    [], [], color="0.5", lw=1, ls="-.", label="V − 1: the affine rank's ceiling"
                ),
            ],
        )
        tols = sorted({r["tol"] for r in sub})
        extra = ""
        if fam == "tuning_curves":
            extra = f", width {sub[0]['target'].get('width', '?')}"
        elif fam == "random_smooth":
            extra = f", bandwidth {sub[0]['target'].get('bandwidth', '?')}"
        ax.set_xscale("log", base=2)
        ax.set_xticks(V, [f"{int(v)}" for v in V])
        ax.set_xlabel("vocabulary size V (tokens)")
        ax.set_ylabel("features k")
        ax.set_title(f"{names.get(fam, fam)}{extra}\nmean KL ≤ {', '.join(f'{t:g}' for t in tols)}")
        ax.set_ylim(bottom=0, top=max(np.nanmax(_counted(sub)[1]), np.nanmax(rank)) * 1.6 + 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle("Features needed vs vocabulary size (ReLU encoders unless noted)")
    return fig


# ---------------------------------------------------------------------------------------------
# (f) encoders


def encoders_figure(rows: Rows) -> Figure:
    """Required k per target for each encoder, next to the unconstrained count (affine rank).

    Args:
      rows: rows of the ``encoders`` sweep.
    """
    labels = list(dict.fromkeys(r["label"] for r in rows))
    acts = list(dict.fromkeys(r["activation"] for r in rows))
    fig = Figure(figsize=(max(8.0, 1.9 * len(labels) + 4), 4.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(acts), 1)
    for j, act in enumerate(acts):
        for i, label in enumerate(labels):
            r = next((r for r in rows if r["label"] == label and r["activation"] == act), None)
            if r is None:
                continue
            x = i + (j - (len(acts) - 1) / 2) * width
            censored = r.get("k") is None
            k = r.get("k_max", 0) if censored else r["k"]
            ax.bar(
                x,
                k,
                width * 0.92,
                color=_COLORS[j % len(_COLORS)],
                hatch="//" if censored else None,
                alpha=0.5 if censored else 1.0,
            )
            ax.text(
                x,
                k,
                f"> {k}" if censored else f"{k}",
                ha="center",
                va="bottom",
                fontsize=7.5,
                bbox={"fc": "white", "ec": "none", "pad": 0.5},
            )

            if r.get("bound_certified") and r.get("lower_bound") is not None:
                ax.plot([x - width / 2, x + width / 2], [r["lower_bound"]] * 2, "k-", lw=2)
    handles = [
        Line2D(
            [],
            [],
            color=_COLORS[j % len(_COLORS)],
            lw=8,
            label="unconstrained (affine rank)" if a == UNCONSTRAINED else a,
        )
        for j, a in enumerate(acts)
    ]
    handles.append(Line2D([], [], color="k", lw=2, label="certified lower bound (PL encoders)"))
    if any(r.get("k") is None for r in rows):
        handles.append(
            Patch(fc="0.85", ec="0.3", hatch="//", label="tol not reached by any k ≤ k_max")
        )
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xticks(range(len(labels)), labels, rotation=12, fontsize=8)
    ax.set_ylabel("features k")
    tols = sorted({r["tol"] for r in rows})
    ax.set_xlabel("target")
    ax.set_title(
        "Features needed depend on the encoder class\n"
        f"(smallest k with mean KL ≤ {', '.join(f'{t:g}' for t in tols)} nats)"
    )
    ax.set_ylim(0, max((r.get("k") or r.get("k_max", 1)) for r in rows) * 1.15 + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, axis="y")
    return fig


# ---------------------------------------------------------------------------------------------
# (d) and (e): the temperature example


def _fit_curves(row: Mapping[str, Any]) -> tuple[Any, np.ndarray, np.ndarray]:
    """(target, t, model probabilities (T, V)) of a stored fit."""
    import jax.numpy as jnp

    from jaxfeat import Features, probs

    tgt = make_target(row["target"])
    prm = Features(
        *(jnp.asarray(row["params"][n], tgt.probs.dtype) for n in ("c", "l", "w", "b", "theta"))
    )
    return tgt, np.asarray(tgt.t), np.asarray(probs(prm, tgt.t, row["activation"]))


def _log_ratio(p: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.log(np.maximum(p[:, i], 1e-300)) - np.log(np.maximum(p[:, j], 1e-300))


def _of_target(rows: Rows, spec: tuple[tuple[str, Any], ...]) -> list[Mapping[str, Any]]:
    """The rows fitted to one of the seed's targets, on whatever grid size (``n``)."""
    want = {k: v for k, v in spec if k != "n"}
    return [r for r in rows if {k: v for k, v in r["target"].items() if k != "n"} == want]


def _fit_label(row: Mapping[str, Any], digits: int) -> str:
    k = int(row["k"])
    # Below 1e-7 nats a float32 fit is exact up to rounding; "0e+00" would claim more.
    kl = "< 1e-7" if row["mean_kl"] < 1e-7 else f"{row['mean_kl']:.{digits}e}"
    return f"{k} fitted feature{'s' if k > 1 else ''} (mean KL {kl} nats)"


def html_figure(rows: Rows) -> Figure:
    """Figure 1: next-token distribution after ``</p>`` with the feature off and on.

    Args:
      rows: rows of the ``seed_fits`` sweep (the HTML tag's with k = 1 and 2 are drawn).
    """
    fits = [r for r in _of_target(rows, SEED_SPECS[0]) if r["k"] in (1, 2)]
    tgt, _, _ = _fit_curves(fits[0])
    names = list(tgt.tokens)
    x = np.arange(len(names))
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, point, title in zip(
        axes, (0, 1), ("feature off (a = 0)", "feature on (a = 1)"), strict=True
    ):
        ax.bar(x, np.asarray(tgt.probs[point]), color="0.75", label="target")
        for row, marker, color in zip(fits, ("o", "x"), ("C0", "C3"), strict=False):
            ax.plot(
                x,
                _fit_curves(row)[2][point],
                marker,
                color=color,
                ms=7,
                ls="none",
                label=_fit_label(row, 0),
            )
        ax.set_xticks(x, [repr(n) for n in names], fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("next token")
        ax.set_ylabel("probability")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        "Figure 1. Next token after an HTML </p>: one binary feature reproduces it exactly"
    )
    return fig


def seed_temperature_figure(rows: Rows) -> Figure:
    """Figure 2: P(cold, mild, hot) at three temperatures, target vs 1- and 2-feature fits.

    Args:
      rows: rows of the ``seed_fits`` sweep (both temperatures' with k = 1 and 2 are drawn).
    """
    fig = Figure(figsize=(13, 6), layout="constrained")
    axes = fig.subplots(2, 3, sharey=True)
    for r, spec in enumerate(SEED_SPECS[1:]):
        fits = [row for row in _of_target(rows, spec) if row["k"] in (1, 2)]
        curves = [_fit_curves(row) for row in fits]
        tgt, t, _ = curves[0]
        for col, level in enumerate(TEMPERATURE_LEVELS):
            i = int(np.argmin(np.abs(t - level)))
            ax = axes[r, col]
            x = np.arange(tgt.vocab)
            ax.bar(x, np.asarray(tgt.probs[i]), color="0.75", label="target")
            for row, (_, _, q), marker, color in zip(
                fits, curves, ("o", "x"), ("C0", "C3"), strict=False
            ):
                ax.plot(x, q[i], marker, color=color, ms=8, ls="none", label=_fit_label(row, 1))
            ax.set_xticks(x, tgt.tokens)
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 2.0)
            kind = "monotone" if r == 0 else "non-monotone"
            ax.set_title(f"{kind} target, t = {t[i]:.0f} °C", fontsize=10)
            ax.set_ylabel("probability (log scale)")
            ax.set_xlabel("next token")
        axes[r, 2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(
        "Figure 2. Temperature feature at three temperatures: one feature matches the "
        "monotone target;\nthe non-monotone one (P(mild)/P(cold) rises then falls) "
        "needs two"
    )
    return fig


def temperature_figure(rows: Rows) -> Figure:
    """Target, best 1-feature and best 2-feature fits of the non-monotone temperature example.

    The right panel shows ``log(P_mild / P_cold)``: the target's rises then falls, which no single
    feature can follow (its every log-ratio is affine in the activation, hence monotone in t).

    Args:
      rows: rows of the ``seed_fits`` sweep (those of the non-monotone temperature with k = 1 and
        k = 2 are drawn).
    """
    rows = _of_target(rows, SEED_SPECS[2])
    by_k = {r["k"]: r for r in rows}
    ks = [k for k in (1, 2) if k in by_k] or sorted(by_k)[:2]
    tgt, t, _ = _fit_curves(by_k[ks[0]])
    p = np.asarray(tgt.probs, float)
    tokens = list(tgt.tokens or [f"token {v}" for v in range(p.shape[1])])
    mild, cold = (
        tokens.index("mild") if "mild" in tokens else 1,
        tokens.index("cold") if ("cold" in tokens) else 0,
    )
    fig = Figure(figsize=(12.0, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    styles = {ks[0]: "--", ks[-1]: ":"} if len(ks) > 1 else {ks[0]: "--"}
    for v, name in enumerate(tokens):
        ax1.plot(t, p[:, v], "-", color=_COLORS[v], lw=2.5, alpha=0.5, label=f"P({name}) target")
    for k in ks:
        _, _, q = _fit_curves(by_k[k])
        for v in range(p.shape[1]):
            ax1.plot(t, q[:, v], styles[k], color=_COLORS[v], lw=1.5)
    for k in ks:
        ax1.plot(
            [],
            [],
            styles[k],
            color="k",
            label=f"{k}-feature fit (mean KL {by_k[k]['mean_kl']:.1e} nats)",
        )
    ax1.set_xlabel("temperature t (°C)")
    ax1.set_ylabel("next-token probability")
    ax1.set_title("Next-token probabilities")
    ax1.legend(fontsize=7.5)
    ax1.grid(alpha=0.3)

    target_ratio = _log_ratio(p, mild, cold)
    ax2.plot(t, target_ratio, "-", color="k", lw=2.5, alpha=0.5, label="target")
    for k in ks:
        _, _, q = _fit_curves(by_k[k])
        ax2.plot(
            t, _log_ratio(q, mild, cold), styles[k], color="k", lw=1.5, label=f"{k}-feature fit"
        )
    peak = t[int(np.argmax(target_ratio))]
    ax2.axvspan(peak, t[-1], color="tab:red", alpha=0.08)
    ax2.axvline(peak, color="tab:red", lw=1, alpha=0.6)
    ax2.annotate(
        f"ratio falls after {peak:.1f} °C:\none feature cannot follow\n"
        "(its log-ratios are monotone in t)",
        xy=(peak, target_ratio.max()),
        xytext=(0.97, 0.95),
        textcoords="axes fraction",
        ha="right",
        va="top",
        fontsize=8,
        color="tab:red",
        arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 1},
    )
    ax2.set_xlabel("temperature t (°C)")
    ax2.set_ylabel(f"log(P({tokens[mild]}) / P({tokens[cold]})), nats")
    ax2.set_title(f"The ratio {tokens[mild]}/{tokens[cold]} rises then falls")
    ax2.legend(fontsize=8, loc="lower left")
    ax2.grid(alpha=0.3)
    fig.suptitle(
        "Temperature example: one feature cannot make a ratio rise then fall; "
        "two coupled features can"
    )
    return fig


def coupled_features_figure(rows: Rows, k: int | None = None) -> Figure:
    """The features of one fit: activation of each over t and its logit vector.

    Shows that each feature moves several tokens at once and is active on part of the range only,
    and that the rise and the fall of ``log(P_mild / P_cold)`` come from different features: no
    single feature is "the temperature".

    Args:
      rows: rows of the ``seed_fits`` sweep (the non-monotone temperature's are drawn).
      k: which fit (default 2, the fewest features that make the ratio rise and fall; else the
        largest stored).
    """
    rows = _of_target(rows, SEED_SPECS[2])
    import jax.numpy as jnp

    from jaxfeat import Features, activations

    by_k = {r["k"]: r for r in rows}
    if k is None:
        k = 2 if 2 in by_k else max(by_k)

    row = by_k[k]
    tgt, t, _ = _fit_curves(row)
    prm = Features(
        *(jnp.asarray(row["params"][n], tgt.probs.dtype) for n in ("c", "l", "w", "b", "theta"))
    )
    a = np.asarray(activations(prm, tgt.t, row["activation"]))
    L = np.asarray(prm.l, float)
    tokens = list(tgt.tokens or [f"token {v}" for v in range(L.shape[1])])
    mild = tokens.index("mild") if "mild" in tokens else 1
    cold = tokens.index("cold") if "cold" in tokens else 0
    fig = Figure(figsize=(15.0, 5.0), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 0.9, 1.1]})
    for i in range(k):
        ax1.plot(t, a[:, i], color=_COLORS[3 + i % 3], lw=2, label=f"feature {i + 1}")
    ax1.set_xlabel("temperature t (°C)")
    ax1.set_ylabel(f"activation a_i(t) = {row['activation']}(w_i t + b_i)")
    ax1.set_title("Encoder: when each feature is active")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)

    Lc = L - L.mean(axis=1, keepdims=True)  # softmax ignores a shift shared by all tokens
    width = 0.8 / k
    for i in range(k):
        x = np.arange(len(tokens)) + (i - (k - 1) / 2) * width
        ax2.bar(x, Lc[i], width * 0.9, color=_COLORS[3 + i % 3], label=f"feature {i + 1}")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(range(len(tokens)), tokens)
    ax2.set_xlabel("next token")
    ax2.set_ylabel("logit vector l_i, centred (nats per unit activation)")
    ax2.set_title("Decoder: what each feature does to the logits")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, axis="y")

    total = np.zeros_like(t)
    for i in range(k):
        contrib = a[:, i] * (L[i, mild] - L[i, cold])
        total += contrib
        ax3.plot(t, contrib, color=_COLORS[3 + i % 3], lw=1.5, label=f"feature {i + 1}")
    c = np.asarray(prm.c, float)
    ax3.plot(t, total + c[mild] - c[cold], "k:", lw=2, label="sum + bias = fit")
    ax3.plot(
        t,
        _log_ratio(np.asarray(tgt.probs, float), mild, cold),
        "k-",
        lw=2.5,
        alpha=0.3,
        label="target",
    )
    ax3.set_xlabel("temperature t (°C)")
    ax3.set_ylabel(f"contribution to log(P({tokens[mild]}) / P({tokens[cold]})), nats")
    ax3.set_title(
        f"The {tokens[mild]}/{tokens[cold]} ratio: rise and fall come from\ndifferent features"
    )
    ax3.legend(fontsize=8)
    ax3.grid(alpha=0.3)
    fig.suptitle(
        f"The {k} coupled features of the best {k}-feature fit (mean KL "
        f'{row["mean_kl"]:.1e} nats): no single feature means "temperature"'
    )
    return fig


# ---------------------------------------------------------------------------------------------
# From results files to PNGs


# Each figure: (its builder, the sweep whose rows it draws).
_BUILDERS = {
    "oscillations": (oscillations_figure, "oscillations"),
    "tolerance": (tolerance_figure, "tolerance"),
    "vocabulary": (vocabulary_figure, "vocabulary"),
    "encoders": (encoders_figure, "encoders"),
    "temperature": (temperature_figure, "seed_fits"),
    "coupled": (coupled_features_figure, "seed_fits"),
    "html": (html_figure, "seed_fits"),
    "seed_temperature": (seed_temperature_figure, "seed_fits"),
}


def for_mode(filename: str, mode: str) -> str:
    """A figure's file name in a run of ``mode``: as it is for quick mode (what ``jaxfeat
    reproduce`` draws), with the mode before the suffix otherwise, so that runs of one mode never
    overwrite another's figures.

    Example:
      >>> for_mode("toy_family.png", "quick"), for_mode("toy_family.png", "full")
      ('toy_family.png', 'toy_family_full.png')
    """
    if mode == "quick":
        return filename
    path = Path(filename)
    return f"{path.stem}_{mode}{path.suffix}"


def figure_name(name: str, mode: str = "quick") -> str:
    """The file name of figure ``name`` (a key of :data:`FIGURES`) for a run of ``mode``
    (:func:`for_mode`).

    Example:
      >>> figure_name("oscillations"), figure_name("oscillations", "full")
      ('feature_count_oscillations.png', 'feature_count_oscillations_full.png')
    """
    return for_mode(FIGURES[name], mode)


def plot(
    name: str, results_dir: str | Path, figures_dir: str | Path, mode: str = "quick"
) -> Path | None:
    """Draws one figure from the results files and saves it in ``figures_dir``.

    Args:
      name: a key of :data:`FIGURES`.
      results_dir: directory of the sweeps' JSON files.
      figures_dir: where the PNG goes (created if needed), named by :func:`figure_name`.
      mode: the run's mode (``"quick"``, ``"full"``), which names the file.

    Returns:
      The PNG's path, or ``None`` when the sweep it draws has no rows.

    Example:
      >>> import tempfile
      >>> plot("oscillations", tempfile.mkdtemp(), tempfile.mkdtemp()) is None  # no results yet
      True
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown figure {name!r}; use one of {', '.join(FIGURES)}.")
    builder, sweep = _BUILDERS[name]
    rows = read_rows(results_dir, sweep)
    if not rows:
        return None
    fig = builder(rows)
    return save(fig, Path(figures_dir) / figure_name(name, mode))


def plot_all(results_dir: str | Path, figures_dir: str | Path, mode: str = "quick") -> list[Path]:
    """Every figure whose results file exists in ``results_dir``, written to ``figures_dir``.

    Args:
      results_dir: directory of the sweeps' JSON files (see
        :func:`jaxfeat.experiments.sweeps.run_sweeps`).
      figures_dir: where the PNGs go (created if needed).
      mode: the run's mode, which names the files (:func:`figure_name`).

    Returns:
      The paths written.
    """
    out = []
    for name in FIGURES:
        path = plot(name, results_dir, figures_dir, mode)
        if path is not None:
            out.append(path)
    return out
