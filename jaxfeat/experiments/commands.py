"""The ``jaxfeat count`` and ``jaxfeat fit`` commands: feature counts for your own curves.

Both read a curve with :func:`jaxfeat.read_curve` (a ``.csv`` table ``t,<token>,...`` or an
``.npz`` archive), print a one-line answer, and optionally write a JSON summary (atomically: a
temporary file in the same directory, then ``os.replace``) and a three-panel figure: target vs fit
probabilities, log-ratios against the first token, and each feature's activation profile.

Built on jaxfeat's public API alone. Figures use :class:`matplotlib.figure.Figure` without pyplot.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import jaxfeat

from .plots import save
from .store import atomic_write, atomic_write_json

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

KINDS = ("probs", "logits", "counts")

# Grid of model evaluations per figure panel, on top of the file's own grid points: fitted
# curves are drawn smoothly, with their kinks where the features switch on.
_FINE = 400
# Legends list at most this many tokens or features (the lines are all drawn).
_LEGEND_MAX = 10
_T_LABEL = "latent t  [units of the file's t]"
_PARAMS = ("c", "l", "w", "b", "theta")
_METRIC_NAMES = {"mean_kl": "mean KL", "max_kl": "max KL"}


# ---------------------------------------------------------------------------------------------
# Commands


def count(
    path: str | os.PathLike[str],
    tol: float,
    *,
    kind: str = "probs",
    k_max: int = 64,
    restarts: int = 16,
    key: int = 0,
    json_out: str | os.PathLike[str] | None = None,
    figure_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """How many features the curve in a file needs: a certified bracket ``lower_bound <= k``.

    Reads the curve (:func:`jaxfeat.read_curve`), runs :func:`jaxfeat.required_features` and prints
    one line with the bracket. ``k`` is the smallest count whose fit reaches ``tol`` (fits are
    local searches, so an upper bound); every count below ``lower_bound`` is certified unable to
    (segmentation bound), so ``k == lower_bound`` proves ``k`` is the minimum.

    Args:
      path: the curve, ``.csv`` or ``.npz`` (see :func:`jaxfeat.read_curve`).
      tol: tolerance on the mean KL over the grid, in nats (> 0).
      kind: ``"probs"``, ``"logits"`` or ``"counts"``: what the file's values are.
      k_max: largest feature count to try.
      restarts: restarts per fit.
      key: integer seed.
      json_out: where to write the returned summary as JSON, or ``None``.
      figure_out: where to write the figure (PNG unless the suffix names another format), or
        ``None``.

    Returns:
      The JSON-ready summary: ``file``, ``kind``, ``T``, ``V``, ``tokens``, ``tol``, ``metric``,
      ``activation``, ``k_max``, ``restarts``, ``seed``, ``k`` (``None`` if no k <= k_max reaches
      ``tol``), ``lower_bound``, ``gap`` (``k - lower_bound``), ``proven``, ``mean_kl``,
      ``max_kl``, ``converged``, ``num_steps``, ``kl`` (per grid point), ``params`` (the fitted
      ``c``, ``l``, ``w``, ``b``, ``theta`` as nested lists), and per k = 1..k_max ``losses``
      (``None`` where not fitted) and certified ``bounds`` (nats).

    Raises:
      ValueError: for a bad file (the message names the row and column) or bad options.

    Example:
      Two features are certified too few for one oscillation, so nothing needs fitting:

      >>> import os, tempfile, jaxfeat
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = write_csv(os.path.join(d, "osc.csv"), jaxfeat.targets.oscillating(1, n=32))
      ...     out = count(path, 1e-3, k_max=2)
      /.../osc.csv: k >= 3 features for mean KL <= 0.001 nats (certified: no k <= 2 reaches it)
      >>> out["k"], out["lower_bound"], out["V"]
      (None, 3, 3)
    """
    target = jaxfeat.read_curve(path, kind=kind)
    req = jaxfeat.required_features(target, tol, k_max=k_max, restarts=restarts, key=key)
    gap = None if req.k is None else req.k - req.lower_bound
    result = {
        **_curve_fields(path, kind, target),
        "tol": req.tol,
        "metric": req.metric,
        "activation": req.activation,
        "k_max": k_max,
        "restarts": restarts,
        "seed": key,
        "k": req.k,
        "lower_bound": req.lower_bound,
        "gap": gap,
        "proven": gap == 0,
        **_fit_fields(req.fit),
        "losses": _floats(req.losses),
        "bounds": _floats(req.bounds),
    }
    print(count_summary(result), flush=True)
    if req.fit is not None:
        sub = f"certified lower bound {req.lower_bound}" + (" (proven)" if gap == 0 else "")
    else:
        sub = f"no k <= {k_max} reaches {_metric(req.metric)} <= {_tol(req.tol)} nats"
    _write_outputs(result, target, req.fit, json_out, figure_out, sub)
    return result


def fit(
    path: str | os.PathLike[str],
    k: int,
    *,
    kind: str = "probs",
    restarts: int = 16,
    key: int = 0,
    json_out: str | os.PathLike[str] | None = None,
    figure_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fits k features to the curve in a file, with the certified floor for k features.

    Reads the curve (:func:`jaxfeat.read_curve`), runs :func:`jaxfeat.fit` and
    :func:`jaxfeat.segmentation_lower_bound` (a certified lower bound on the mean KL of every
    k-feature ReLU or JumpReLU model), and prints one line.

    Args:
      path: the curve, ``.csv`` or ``.npz``.
      k: number of features (>= 1).
      kind: ``"probs"``, ``"logits"`` or ``"counts"``.
      restarts: restarts of the fit.
      key: integer seed.
      json_out: where to write the returned summary as JSON, or ``None``.
      figure_out: where to write the figure, or ``None``.

    Returns:
      The JSON-ready summary: ``file``, ``kind``, ``T``, ``V``, ``tokens``, ``activation``,
      ``restarts``, ``seed``, ``k``, ``mean_kl``, ``max_kl``, ``converged``, ``num_steps``,
      ``kl``, ``params`` (as in :func:`count`) and ``bound``, the certified lower bound on the
      mean KL of any k-feature model (nats).

    Raises:
      ValueError: for a bad file (the message names the row and column) or bad options.

    Example:
      >>> import os, tempfile, jaxfeat
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = write_csv(os.path.join(d, "osc.csv"), jaxfeat.targets.oscillating(1, n=32))
      ...     out = fit(path, 3, restarts=4)
      /.../osc.csv: k = 3 features reach mean KL ... nats (max ...); certified: no 3-feature
      model goes below 1.9e-3 nats
      >>> out["bound"] <= out["mean_kl"], len(out["params"]["l"]), len(out["kl"])
      (True, 3, 32)
    """
    target = jaxfeat.read_curve(path, kind=kind)
    res = jaxfeat.fit(target, k, restarts=restarts, key=key)
    bound = float(jaxfeat.segmentation_lower_bound(target, k).bounds[k - 1])
    result = {
        **_curve_fields(path, kind, target),
        "activation": res.activation,
        "restarts": restarts,
        "seed": key,
        "k": k,
        **_fit_fields(res),
        "bound": bound,
    }
    print(fit_summary(result), flush=True)
    sub = f"certified floor for k = {k}: {_num(bound)} nats"
    _write_outputs(result, target, res, json_out, figure_out, sub)
    return result


def write_csv(
    path: str | os.PathLike[str], target: jaxfeat.Target, *, tokens: Sequence[str] | None = None
) -> Path:
    """Writes a target as the CSV table :func:`jaxfeat.read_curve` reads, atomically.

    Values are written in their shortest exact form, so reading the file back gives the same
    target. Use it to export jaxfeat's built-in curves (:mod:`jaxfeat.targets`) as templates.

    Args:
      path: destination ``.csv`` (its directory is created).
      target: the curve.
      tokens: V column names; default the target's tokens, else ``token0``, ``token1``, ...

    Returns:
      The path written.

    Example:
      >>> import os, tempfile, jaxfeat
      >>> tgt = jaxfeat.Target([0, 10], [[0.5, 0.25, 0.25], [0.125, 0.125, 0.75]], ("a", " b", "c"))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = write_csv(os.path.join(d, "curve.csv"), tgt)
      ...     print(path.read_text(), end="")
      ...     back = jaxfeat.read_curve(path)
      t,a, b,c
      0.0,0.5,0.25,0.25
      10.0,0.125,0.125,0.75
      >>> back.tokens, bool((back.probs == tgt.probs).all())
      (('a', ' b', 'c'), True)
    """
    V = target.vocab
    names = tokens if tokens is not None else target.tokens
    names = list(names) if names is not None else [f"token{j}" for j in range(V)]
    if len(names) != V:
        raise ValueError(f"tokens has {len(names)} names but the target has V = {V} tokens.")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["t", *names])
    t, p = np.asarray(target.t), np.asarray(target.probs)
    writer.writerows([str(s), *map(str, row)] for s, row in zip(t, p, strict=True))
    path = Path(path)
    text = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))
    return path


def count_summary(result: dict[str, Any]) -> str:
    """The one-line answer of :func:`count`, from its summary.

    Args:
      result: the dict :func:`count` returns.

    Returns:
      One line, e.g. ``"osc.csv: 4 <= k <= 5 features for mean KL <= 0.001 nats (k = 5 reaches
      8.1e-4 nats; converged)"``.

    Example:
      >>> summary = {"file": "osc.csv", "k": 5, "lower_bound": 4, "tol": 1e-3, "k_max": 8,
      ...            "metric": "mean_kl", "mean_kl": 8.1e-4, "converged": True}
      >>> print(count_summary(summary))
      osc.csv: 4 <= k <= 5 features for mean KL <= 0.001 nats (k = 5 reaches 8.1e-4 nats;
      converged)
      >>> print(count_summary({**summary, "k": 4}))
      osc.csv: k = 4 features for mean KL <= 0.001 nats (k = 4 reaches 8.1e-4 nats; converged);
      k = 4 is proven: the certified lower bound equals the fitted count
    """
    name, k, lb = result["file"], result["k"], result["lower_bound"]
    metric = result["metric"]
    goal = f"{_metric(metric)} <= {_tol(result['tol'])} nats"
    if k is None:
        if lb > result["k_max"]:
            return f"{name}: k >= {lb} features for {goal} (certified: no k <= {lb - 1} reaches it)"
        losses = np.array([np.nan if x is None else x for x in result["losses"]], float)
        best = ""
        if np.any(np.isfinite(losses)):
            j = int(np.nanargmin(losses))
            best = f"; the best fit, k = {j + 1}, reaches {_num(losses[j])} nats"
        return (
            f"{name}: k >= {lb} features for {goal} (certified), but no fit with k <= "
            f"{result['k_max']} reached it{best}; try a larger --k-max"
        )
    bracket = f"k = {k}" if lb == k else f"{lb} <= k <= {k}"
    reach = f"k = {k} reaches {_num(result[metric])} nats; {_converged(result['converged'])}"
    line = f"{name}: {bracket} features for {goal} ({reach})"
    if lb == k:
        line += f"; k = {k} is proven: the certified lower bound equals the fitted count"
    return line


def fit_summary(result: dict[str, Any]) -> str:
    """The one-line answer of :func:`fit`, from its summary.

    Args:
      result: the dict :func:`fit` returns.

    Returns:
      One line with the fit's mean and max KL and the certified floor.

    Example:
      >>> print(fit_summary({"file": "osc.csv", "k": 3, "mean_kl": 2.9e-3, "max_kl": 1.1e-2,
      ...                    "converged": True, "bound": 1.9e-3}))
      osc.csv: k = 3 features reach mean KL 2.9e-3 nats (max 0.011; converged); certified: no
      3-feature model goes below 1.9e-3 nats
    """
    k = result["k"]
    noun = "feature reaches" if k == 1 else "features reach"
    return (
        f"{result['file']}: k = {k} {noun} mean KL {_num(result['mean_kl'])} nats (max "
        f"{_num(result['max_kl'])}; {_converged(result['converged'])}); certified: no "
        f"{k}-feature model goes below {_num(result['bound'])} nats"
    )


# ---------------------------------------------------------------------------------------------
# Figure


def curve_figure(
    target: jaxfeat.Target,
    result: jaxfeat.FitResult | None,
    *,
    name: str = "curve",
    subtitle: str = "",
) -> Figure:
    """Three panels: probabilities, log-ratios to the first token, and feature activations.

    (a) target (solid) and fitted (dashed) probability of each token over t; (b) log-ratios
    ``log(p_j / p_0)`` of every token against the first, target and fit, in nats (target points
    where either probability is 0 are left out); (c) each feature's activation ``a_i(t)``, with
    its knot (where it switches on) dotted. The fit is drawn on a fine grid between the file's
    points, so its kinks show.

    Args:
      target: the curve.
      result: a :class:`jaxfeat.FitResult` for it, or ``None`` to draw the target alone.
      name: the curve's name for the title (e.g. the file name).
      subtitle: appended to the title line.

    Returns:
      A :class:`matplotlib.figure.Figure` with 3 axes (not registered with pyplot).

    Example:
      >>> import jaxfeat
      >>> fig = curve_figure(jaxfeat.targets.temperature(n=11), None, name="temperature")
      >>> [ax.get_title() for ax in fig.axes]
      ['(a) next-token probabilities', "(b) log-ratios against 'cold'", '(c) feature activations']
    """
    t = np.asarray(target.t, np.float64)
    p = np.asarray(target.probs, np.float64)
    T, V = p.shape
    names = target.tokens if target.tokens is not None else [f"token {j}" for j in range(V)]
    tokens = [_show(tok) for tok in names]
    ref = repr(names[0])  # the reference token, quoted: names like "none" or " " stay legible
    colors = _colors(V)
    fig = Figure(figsize=(15.0, 4.8), layout="constrained")
    ax_p, ax_r, ax_a = fig.subplots(1, 3)
    marker = {"marker": "o", "ms": 3} if T <= 60 else {}
    if result is not None:
        fine = np.union1d(np.linspace(t[0], t[-1], _FINE), t)
        params, act = result.params, result.activation
        q = np.asarray(jaxfeat.probs(params, fine, act), np.float64)
        z = np.asarray(jaxfeat.logits(params, fine, act), np.float64)
        a = np.asarray(jaxfeat.activations(params, fine, act), np.float64)

    # (a) probabilities
    for j in range(V):
        ax_p.plot(t, p[:, j], color=colors[j], lw=1.6, label=tokens[j], **marker)
        if result is not None:
            ax_p.plot(fine, q[:, j], color=colors[j], lw=1.4, ls="--")
    ax_p.set(
        title="(a) next-token probabilities",
        xlabel=_T_LABEL,
        ylabel="probability",
        ylim=(-0.03, 1.03),
    )
    styles = [Line2D([], [], color="0.3", lw=1.6, label="target")]
    if result is not None:
        styles.append(Line2D([], [], color="0.3", lw=1.4, ls="--", label="fit"))
    handles = ax_p.get_legend_handles_labels()[0][:_LEGEND_MAX]
    more = f" (first {_LEGEND_MAX} of {V} tokens)" if V > _LEGEND_MAX else ""
    ax_p.legend(
        handles=handles + styles, fontsize=8, title=f"tokens{more}", title_fontsize=8, loc="best"
    )

    # (b) log-ratios against the first token; zeros are masked, never passed to log
    pos = p > 0
    logp = np.full_like(p, np.nan)
    np.log(p, out=logp, where=pos)
    for j in range(1, V):
        ax_r.plot(t, logp[:, j] - logp[:, 0], color=colors[j], lw=1.6, label=tokens[j], **marker)
        if result is not None:
            ax_r.plot(fine, z[:, j] - z[:, 0], color=colors[j], lw=1.4, ls="--")
    ax_r.axhline(0.0, color="0.7", lw=0.8)
    ax_r.set(
        title=f"(b) log-ratios against {ref}",
        xlabel=_T_LABEL,
        ylabel=f"log(p_token / p[{ref}])  [nats]",
    )
    ax_r.legend(handles=styles, fontsize=8, loc="best")
    if not np.all(pos):
        ax_r.text(
            0.01,
            0.01,
            "target points with a zero probability are left out",
            transform=ax_r.transAxes,
            fontsize=7,
            color="0.4",
            va="bottom",
        )

    # (c) activations
    ax_a.set(
        title="(c) feature activations",
        xlabel=_T_LABEL,
        ylabel="activation a_i(t)  [dimensionless]",
    )
    if result is None:
        ax_a.text(
            0.5,
            0.5,
            "no fit to show",
            transform=ax_a.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    else:
        w = np.asarray(params.w, np.float64)
        b = np.asarray(params.b, np.float64)
        theta = np.asarray(params.theta, np.float64)
        k = w.shape[0]
        fcolors = _colors(k)
        for i in range(k):
            ax_a.plot(fine, a[:, i], color=fcolors[i], lw=1.6, label=f"feature {i + 1}")
            knot = _knot(w[i], b[i], theta[i], act)
            if knot is not None and t[0] <= knot <= t[-1]:
                ax_a.axvline(knot, color=fcolors[i], lw=0.8, ls=":")
        if k <= _LEGEND_MAX:
            ax_a.legend(fontsize=8, title="dotted: knots", title_fontsize=8, loc="best")

    if result is None:
        title = f"{name}: target only"
    else:
        k = int(np.asarray(result.params.w).shape[0])
        title = (
            f"{name}: k = {k} {'feature' if k == 1 else 'features'}, "
            f"mean KL = {_num(float(result.mean_kl))} nats"
        )
    fig.suptitle(title + (f" ({subtitle})" if subtitle else ""))
    return fig


# ---------------------------------------------------------------------------------------------
# Command line


def add_parsers(subparsers: SubParsers) -> None:
    """Registers the ``count`` and ``fit`` subcommands on an argparse subparsers object.

    Each sets ``func``, which takes the parsed arguments and returns the exit code: 0, or 2 with
    ``jaxfeat: error: <message>`` on stderr for a bad file or option.

    Args:
      subparsers: the object ``argparse.ArgumentParser.add_subparsers`` returns.

    Example:
      >>> import argparse
      >>> parser = argparse.ArgumentParser(prog="jaxfeat")
      >>> add_parsers(parser.add_subparsers(dest="command", required=True))
      >>> args = parser.parse_args(["count", "curve.csv", "--tol", "1e-4", "--kind", "counts"])
      >>> args.file, args.tol, args.kind, args.k_max, callable(args.func)
      ('curve.csv', 0.0001, 'counts', 64, True)
    """
    file_help = (
        "the curve: a .csv table (header 't,<token>,<token>,...', one row per grid point) or a "
        ".npz archive (arrays t and probs, logits or counts; optional tokens)"
    )
    cnt = subparsers.add_parser(
        "count",
        help="how many features does the curve in FILE need? (certified bracket)",
        description="Finds the fewest features whose fit reaches --tol, with the certified "
        "lower bound below which no model can: lower_bound <= k.",
    )
    cnt.add_argument("file", metavar="FILE", help=file_help)
    cnt.add_argument(
        "--tol",
        type=_positive_float,
        default=1e-3,
        metavar="NATS",
        help="tolerance on the mean KL over the grid, in nats (default: 1e-3)",
    )
    cnt.add_argument(
        "--k-max",
        type=_positive_int,
        default=64,
        metavar="K",
        help="largest feature count to try (default: 64)",
    )
    _common_options(cnt)
    cnt.set_defaults(func=_count_command)

    ft = subparsers.add_parser(
        "fit",
        help="fit K features to the curve in FILE",
        description="Fits K features and reports the mean KL with the certified floor for K.",
    )
    ft.add_argument("file", metavar="FILE", help=file_help)
    ft.add_argument(
        "--k", type=_positive_int, required=True, metavar="K", help="number of features"
    )
    _common_options(ft)
    ft.set_defaults(func=_fit_command)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="probs",
        help="what the values are: probabilities (rows summing to 1), logits "
        "(softmax per row) or next-token counts (default: probs)",
    )
    parser.add_argument(
        "--restarts",
        type=_positive_int,
        default=16,
        metavar="N",
        help="restarts per fit (default: 16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--json", metavar="OUT", default=None, help="write the results as JSON to OUT"
    )
    parser.add_argument(
        "--figure",
        metavar="OUT",
        default=None,
        help="write the figure to OUT (PNG, or the format of OUT's suffix)",
    )


def _count_command(args: argparse.Namespace) -> int:
    return _guarded(lambda: count(args.file, args.tol, k_max=args.k_max, **_shared(args)))


def _fit_command(args: argparse.Namespace) -> int:
    return _guarded(lambda: fit(args.file, args.k, **_shared(args)))


def _shared(args: argparse.Namespace) -> dict[str, object]:
    """The keywords that ``count`` and ``fit`` share, from the parsed options."""
    return {
        "kind": args.kind,
        "restarts": args.restarts,
        "key": args.seed,
        "json_out": args.json,
        "figure_out": args.figure,
    }


def _guarded(run: Callable[[], object]) -> int:
    """Runs a command; a bad file or option is one line on stderr and exit code 2."""
    try:
        run()
    except (ValueError, OSError) as e:
        print(f"jaxfeat: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


# ---------------------------------------------------------------------------------------------
# Helpers


def _curve_fields(path: str | os.PathLike[str], kind: str, target: jaxfeat.Target) -> dict:
    return {
        "file": os.fspath(path),
        "kind": kind,
        "T": target.num_points,
        "V": target.vocab,
        "tokens": None if target.tokens is None else list(target.tokens),
    }


def _fit_fields(result: jaxfeat.FitResult | None) -> dict[str, Any]:
    if result is None:
        return dict.fromkeys(("mean_kl", "max_kl", "converged", "num_steps", "kl", "params"))
    params = result.params
    return {
        "mean_kl": float(result.mean_kl),
        "max_kl": float(result.max_kl),
        "converged": bool(result.converged),
        "num_steps": int(result.num_steps),
        "kl": _floats(result.kl),
        "params": {name: _floats(getattr(params, name)) for name in _PARAMS},
    }


def _floats(x: Any) -> Any:
    """Nested lists of floats, ``None`` for NaN (JSON has no NaN)."""
    a = np.asarray(x, np.float64)
    if a.ndim == 0:
        return None if math.isnan(a) else float(a)
    return [_floats(v) for v in a]


def _write_outputs(result, target, fit_result, json_out, figure_out, subtitle: str) -> None:
    if json_out is not None:
        atomic_write_json(json_out, result)
        print(f"wrote {os.fspath(json_out)}", flush=True)
    if figure_out is not None:
        name = Path(result["file"]).name
        save(curve_figure(target, fit_result, name=name, subtitle=subtitle), figure_out)
        print(f"wrote {os.fspath(figure_out)}", flush=True)


def _knot(w: float, b: float, theta: float, activation: str) -> float | None:
    """Where a feature switches on: ``w t + b = 0`` (ReLU) or ``= theta`` (JumpReLU)."""
    if activation == "softplus" or w == 0:
        return None
    return float(((theta if activation == "jumprelu" else 0.0) - b) / w)


def _show(token: str) -> str:
    """A token as a label: its repr where blanks or control characters would hide it."""
    return token if token and token.isprintable() and token.strip() == token else repr(token)


def _colors(n: int) -> list:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.95, n)]


def _metric(metric: str) -> str:
    return _METRIC_NAMES.get(metric, metric)


def _converged(flag: bool) -> str:
    return "converged" if flag else "stopped at the step limit"


def _num(x: float | None) -> str:
    """Compact KL values for one-line answers: ``0.05``, ``8.1e-4``."""
    if x is None:
        return "n/a"
    x = float(x)
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return f"{x:.2g}"
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def _tol(x: float) -> str:
    """Tolerances as given: ``0.001``, ``1e-5``."""
    return f"{float(x):g}".replace("e-0", "e-").replace("e+0", "e+")
