"""Figures from the throughput benchmark's results (``benchmarks/throughput.py``).

Writes ``throughput_batch.png`` (loss against time for jaxfeat and the baselines, and the cost of
one Gauss-Newton step) and ``throughput_scaling.png`` (time and memory against batch size, k, T
and V).

Usage::

    python benchmarks/plot_throughput.py [--results benchmarks/results/throughput_cpu.json]
        [--outdir figures] [--smoke]

``--smoke`` draws at a low resolution from the smoke run's results (``throughput.py --smoke``,
a temporary file unless ``--results`` says otherwise) into a temporary directory unless
``--outdir`` is given, so a check never replaces the committed figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

DPI = 130
SMOKE_DPI = 50
# What throughput.py --smoke writes without --out.
SMOKE_RESULTS = Path(tempfile.gettempdir()) / "jaxfeat_throughput_smoke.json"

STYLE = {
    "jaxfeat": {"color": "C0", "marker": "o", "label": "jaxfeat (defaults)"},
    "scipy_lbfgsb": {"color": "C1", "marker": "s", "label": "SciPy L-BFGS-B, serial"},
    "scipy_lbfgsb_random_init": {
        "color": "C1",
        "marker": "^",
        "ls": ":",
        "label": "SciPy L-BFGS-B, random init",
    },
    "optax_lbfgs": {"color": "C2", "marker": "D", "label": "optax.lbfgs, vmapped"},
}


def _points(method: dict, name: str, idx=None, scale: float = 1.0):
    """(time, loss, label) of a method's loss-time curve, losses averaged over ``idx``."""
    rows = method["curve"] if name.startswith("scipy") else method["budgets"]
    out = []
    for r in rows:
        loss = r["loss"] if idx is None else float(np.mean(np.asarray(r["loss_per_target"])[idx]))
        tm = r["time_s"] if name.startswith("scipy") else r["warm_s"]
        label = r.get("max_steps", r.get("steps", r.get("iterations")))
        if tm > 0:
            out.append((tm * scale, loss, label))
    return sorted(out)


def _log_axes(ax) -> None:
    # Ticks at 1, 2 and 5 per decade in plain numbers: short log ranges still get labels, and
    # matplotlib's labelled minor ticks (which collide) are switched off.
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _loss_time_panel(ax, series, ref, title, speedup=None):
    for name, pts, extra in series:
        st = dict(STYLE[name])
        label = st.pop("label") + extra
        xs, ys, _ = zip(*pts, strict=True)
        ax.plot(xs, ys, label=label, lw=1.5, ms=5, **st)
        if name == "jaxfeat":
            for i, (x, y, lab) in enumerate(pts):
                ax.annotate(
                    f"{lab}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(3, 5 if i % 2 == 0 else -10),
                    fontsize=7,
                    color=st["color"],
                )
    if ref is not None:
        ax.axhline(ref, color="0.5", lw=0.8, ls="--", label="reference (1.05 x best)")
    _log_axes(ax)
    ax.set_xlabel("warm wall-clock time (s)")
    ax.set_ylabel("mean KL over grid and targets (nats)")
    if speedup is not None:
        value, bound = speedup
        title += (
            f"\njaxfeat {'at least ' if bound else ''}{value:.0f}x faster at equal or lower loss"
        )
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _speedup(comp: dict, name: str):
    r = comp["jaxfeat_vs"][name]
    s = r["speedup_at_matched_loss"]
    return None if s is None else (s, r["lower_bound"])


def _sizes(res: dict) -> str:
    """ "k=8, 16 restarts" from the run's settings (older results files: the full run's sizes)."""
    cfg = res["settings"].get("config", {})
    return (
        f"k={cfg.get('k', 8)}, {cfg.get('restarts', res['settings'].get('restarts', 16))} restarts"
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def plot_batch(res: dict, path: Path, dpi: int = DPI) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    batch, single, brk = res.get("batch"), res.get("single"), res.get("breakdown")
    run = _sizes(res)
    if batch:
        m = batch["methods"]
        n = res["settings"]["config"]["batch_size"]
        sp, ox = m["scipy_lbfgsb"], m["optax_lbfgs"]
        sub = sp["subset"]
        scale = n / len(sub)
        comp = batch["comparison"]["scipy_lbfgsb"]
        _loss_time_panel(
            axes[0, 0],
            [
                ("jaxfeat", _points(m["jaxfeat"], "jaxfeat", sub), " (labels: max_steps)"),
                (
                    "scipy_lbfgsb",
                    _points(sp, "scipy_lbfgsb", scale=scale),
                    f" (from {len(sub)} targets, x{scale:g})",
                ),
            ],
            comp["reference_loss"],
            f"{n} random_smooth targets, {run}: vs SciPy",
            _speedup(comp, "scipy_lbfgsb"),
        )
        sizes = sorted(ox["subset_runs"], key=int)
        osub = ox["subset_runs"][sizes[-1]]["subset"]
        comp = batch["comparison"]["optax_lbfgs"]
        _loss_time_panel(
            axes[0, 1],
            [
                ("jaxfeat", _points(m["jaxfeat"], "jaxfeat", osub), " (labels: max_steps)"),
                (
                    "optax_lbfgs",
                    _points(ox, "optax_lbfgs"),
                    f" (fitted on {' and '.join(sizes)} targets)",
                ),
            ],
            comp["reference_loss"],
            f"{n} random_smooth targets, {run}: vs optax",
            _speedup(comp, "optax_lbfgs"),
        )
    if single:
        comp = single["comparison"]
        series = [(name, _points(d, name), "") for name, d in single["methods"].items()]
        _loss_time_panel(
            axes[1, 0], series, comp["reference_loss"], f"one target (oscillating(2)), {run}"
        )
    if brk:
        ax = axes[1, 1]
        # (label, colour); lm_step (an isolated step) is in results written before
        # lm_step_in_fit (a step inside the public fit, with the work queue's bookkeeping).
        names = {
            "lm_step": ("Gauss-Newton step (jaxfeat)", "C0"),
            "lm_step_in_fit": ("Gauss-Newton step in the fit (jaxfeat)", "C0"),
            "reseed": ("re-seeding check (jaxfeat)", "C0"),
            "loss": ("loss evaluation", "C7"),
            "value_and_grad": ("value and gradient", "C7"),
            "cholesky_factor_and_solve": ("Cholesky factor + solve", "C7"),
            "optax_lbfgs_step": ("optax L-BFGS step (incl. line search)", "C2"),
        }
        times = brk["seconds_per_member"]
        keys = [k for k in names if times.get(k) is not None]
        vals = [1e6 * max(times[k], 0.0) for k in keys]
        ax.barh(range(len(keys)), vals, color=[names[k][1] for k in keys])
        ax.set_yticks(range(len(keys)), [names[k][0] for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("warm time per member (microseconds)")
        frac = brk["lm_step_fractions"]
        assembly = frac.get(
            "gradient_ggn_assembly_and_queue", frac.get("gradient_and_ggn_assembly")
        )
        shape = f"k={brk.get('k', 8)}, V={brk.get('V', 3)}, T={brk.get('T', 256)}"
        ax.set_title(
            f"one step, {brk['lanes']} members at once ({shape})\nGauss-Newton step: "
            f"{_pct(assembly)} gradient + GGN assembly, {_pct(frac['model_evaluation'])} model,\n"
            f"{_pct(frac['cholesky_factor_and_solve'])} Cholesky solve",
            fontsize=10,
        )
        ax.grid(True, axis="x", alpha=0.3)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    env = res["environment"]
    fig.suptitle(
        f"jaxfeat fitting throughput ({env['backend']}, {env['cpu_count']} CPU cores, "
        f"jax {env['jax']})",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def _n_params(key: str, value: float, k: int = 8, V: int = 3) -> float:
    """(k + 1) V + k at a point of a sweep (the other sizes at k, V)."""
    k = value if key == "k" else k
    V = value if key == "V" else V
    return (k + 1) * V + k


def _above_switch(sweep: dict, kind: str) -> tuple[float | None, str]:
    """Slope of the points above the dense Gauss-Newton size limit, and what ran there.

    Results written since the matrix-free path have ``{kind}_slope_cg``; older ones
    ``{kind}_slope_lbfgs``, when optax.lbfgs was the default above the limit.
    """
    if f"{kind}_slope_cg" in sweep:
        return sweep[f"{kind}_slope_cg"], "matrix-free Gauss-Newton"
    if f"{kind}_slope_lbfgs" in sweep:
        return sweep[f"{kind}_slope_lbfgs"], "lbfgs"
    return None, "matrix-free Gauss-Newton"


def _fit_line(ax, x, y, slope, ls, label) -> None:
    """A power law with the given slope through the geometric centre of the points."""
    c = np.exp(np.mean(np.log(y) - slope * np.log(x)))
    ax.plot(x, c * x**slope, ls, color="0.3", lw=1, label=label)


def plot_scaling(res: dict, path: Path, dpi: int = DPI) -> None:
    sc = res.get("scaling")
    if not sc:
        return
    # Sizes held fixed along each sweep (results written before they were recorded: the full run's).
    dflt = {"k": 8, "T": 256, "V": 3, "restarts": 16, **sc.get("defaults", {})}
    K, V0 = dflt["k"], dflt["V"]
    # Results with recorded sizes measure the whole public call compiled as one program; older
    # ones measured jaxfeat's private kernel.
    mem_label = "XLA buffers of the " + ("compiled fit" if "defaults" in sc else "fit kernel")
    mem_label += " (MiB)"
    axes_info = [
        ("batch_size", "targets per call B"),
        ("k", "features k"),
        ("T", "grid points T"),
        ("V", "vocabulary V"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    lm_max = sc.get("lm_max_params")
    for j, (key, xlabel) in enumerate(axes_info):
        if key not in sc:
            axes[0, j].set_axis_off()
            axes[1, j].set_axis_off()
            continue
        pts = [p for p in sc[key]["points"] if "skipped" not in p]
        xs = np.array([p["value"] for p in pts], float)
        ts = np.array([p["warm_s"] for p in pts], float)
        mem = np.array([(p.get("xla_total_bytes") or np.nan) / 2**20 for p in pts], float)
        for row, ys, ylabel, slope in (
            (0, ts, "warm time per fit_batch call (s)", sc[key]["time_slope_upper_half"]),
            (1, mem, mem_label, sc[key]["memory_slope_upper_half"]),
        ):
            ax = axes[row, j]
            ok = np.isfinite(ys)
            ax.plot(xs[ok], ys[ok], "o-", color="C0" if row == 0 else "C3", ms=5)
            sym = xlabel.split()[-1]
            if ok.sum() >= 2 and slope is not None:
                _fit_line(
                    ax,
                    xs[ok][len(xs[ok]) // 2 :],
                    ys[ok][len(xs[ok]) // 2 :],
                    slope,
                    "--",
                    f"fit on upper half: ~ {sym}^{slope:.2f}",
                )
            kind = "time" if row == 0 else "memory"
            gn = sc[key].get(f"{kind}_slope_gauss_newton")
            above, upper_name = _above_switch(sc[key], kind)
            if lm_max:
                dense = np.array([_n_params(key, x, K, V0) for x in xs]) <= lm_max
                if gn is not None:
                    sel = ok & dense
                    _fit_line(ax, xs[sel], ys[sel], gn, ":", f"dense points: ~ {sym}^{gn:.2f}")
                if above is not None and (ok & ~dense).sum() >= 2:
                    sel = ok & ~dense
                    _fit_line(
                        ax, xs[sel], ys[sel], above, "-.", f"{upper_name}: ~ {sym}^{above:.2f}"
                    )
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="upper left")
            skipped = [p["value"] for p in sc[key]["points"] if "skipped" in p]
            if skipped and row == 0:
                ax.text(
                    0.98,
                    0.03,
                    f"not run (time cap): B = {', '.join(map(str, skipped))}",
                    transform=ax.transAxes,
                    ha="right",
                    fontsize=7,
                    color="0.4",
                )
            if lm_max and key in ("V", "k"):
                # Where (k + 1) V + k exceeds the dense size limit the default optimiser becomes
                # matrix-free Gauss-Newton (optax.lbfgs in results written before it).
                switch = (lm_max - K) / (K + 1) if key == "V" else (lm_max - V0) / (V0 + 1)
                if xs.min() <= switch <= xs.max():
                    ax.axvline(switch, color="0.5", ls=":", lw=1)
                    ax.text(
                        switch,
                        0.03,
                        f"dense | {upper_name}",
                        ha="center",
                        va="bottom",
                        transform=ax.get_xaxis_transform(),
                        fontsize=7,
                        color="0.3",
                        backgroundcolor="white",
                    )
            _log_axes(ax)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="major", alpha=0.3)
    k, T, V = f"k={K}", f"T={dflt['T']}", f"V={V0}"
    axes[0, 0].set_title(f"batch size (mixed targets, {k})", fontsize=10)
    axes[0, 1].set_title(f"features (one target, {T}, {V})", fontsize=10)
    axes[0, 2].set_title(f"grid length (one target, {k}, {V})", fontsize=10)
    axes[0, 3].set_title(f"vocabulary (one target, {k}, {T})", fontsize=10)
    env = res["environment"]
    fig.suptitle(
        f"jaxfeat.fit_batch scaling, {dflt['restarts']} restarts per target "
        f"({env['backend']}, {env['cpu_count']} CPU cores)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results JSON of throughput.py (default "
        "benchmarks/results/throughput_cpu.json; with --smoke, the smoke run's)",
    )
    ap.add_argument(
        "--outdir",
        "--out",
        dest="outdir",
        type=Path,
        default=None,
        help="directory of the PNGs (default figures/; with --smoke, a temporary one)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"a quick check: low resolution ({SMOKE_DPI} dpi), smoke results",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        results = args.results or SMOKE_RESULTS
        outdir = args.outdir or Path(tempfile.mkdtemp(prefix="jaxfeat_throughput_figures_"))
    else:
        results = args.results or Path("benchmarks/results/throughput_cpu.json")
        outdir = args.outdir or Path("figures")
    res = json.loads(results.read_text())
    outdir.mkdir(parents=True, exist_ok=True)
    dpi = SMOKE_DPI if args.smoke else DPI
    plot_batch(res, outdir / "throughput_batch.png", dpi)
    plot_scaling(res, outdir / "throughput_scaling.png", dpi)
    print(f"figures: {outdir / 'throughput_batch.png'}, {outdir / 'throughput_scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
