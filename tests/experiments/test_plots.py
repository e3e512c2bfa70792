"""Figure functions on tiny synthetic results: every axis titled and labelled, PNGs written."""

from __future__ import annotations

import numpy as np
import pytest

from jaxfeat.experiments import plots as _plots
from jaxfeat.experiments import sweeps as ex
from jaxfeat.experiments.store import ResultsStore, row_id

PNG = b"\x89PNG\r\n\x1a\n"


def _row(family, tol, k, lb, pred, *, activation="relu", k_max=12, **spec):
    spec = {"family": family, **spec}
    V = spec.get("n_tokens", spec.get("vocab", 3))
    return {
        "id": row_id("x", {"target": spec, "tol": tol, "activation": activation}),
        "target": spec,
        "label": ex.target_label(spec),
        "tol": tol,
        "k": k,
        "V": V,
        "lower_bound": lb,
        "predicted": pred,
        "affine_rank": min(V - 1, 2),
        "k_max": k_max,
        "activation": activation,
        "bound_certified": activation in ("relu", "jumprelu"),
    }


def _osc(m, tol, k, lb):
    return _row("oscillating", tol, k, lb, 4.5 * m * (tol / 1e-3) ** -0.25, m=m, n=32, vocab=3)


OSC = [
    _osc(m, tol, k, lb)
    for m, tol, k, lb in [
        (1, 1e-3, 5, 4),
        (2, 1e-3, 10, 9),
        (4, 1e-3, None, 12),
        (1, 1e-2, 3, 2),
        (2, 1e-2, 6, 5),
    ]
]
TOL = [
    _osc(m, tol, round(2 * m * tol**-0.25 / 5), None if m == 2 else 1)
    for m in (1, 2)
    for tol in (1e-2, 1e-3, 1e-4)
]
VOCAB = [
    _row(fam, 1e-3, k, k - 1, k - 0.5, **spec)
    for V, k in ((3, 4), (8, 9), (16, 10))
    for fam, spec in (
        ("tuning_curves", {"n_tokens": V, "width": 0.1, "n": 32}),
        ("random_smooth", {"key": 0, "bandwidth": 3, "vocab": V, "n": 32}),
    )
]
ENC = [
    _row("oscillating", 1e-3, k, lb, None, activation=act, m=1, n=32, vocab=3)
    for act, k, lb in (
        ("relu", 5, 4),
        ("jumprelu", 4, 4),
        ("softplus", None, None),
        ("unconstrained", 2, None),
    )
]


def _fit_row(k, logit_vectors, w, b, nonmonotone=True):
    spec = {"family": "temperature", "nonmonotone": nonmonotone, "n": 21}
    V = len(logit_vectors[0])
    return {
        "id": row_id("seed_fits", {"target": spec, "k": k}),
        "target": spec,
        "k": k,
        "activation": "relu",
        "mean_kl": 0.1 / k,
        "max_kl": 0.3 / k,
        "params": {
            "c": [0.0, 1.0, 0.0][:V],
            "l": logit_vectors,
            "w": w,
            "b": b,
            "theta": [0.0] * k,
        },
    }


def _html_row(k):
    spec = {"family": "html_closing_tag"}
    return {
        "id": row_id("seed_fits", {"target": spec, "k": k}),
        "target": spec,
        "k": k,
        "activation": "relu",
        "mean_kl": 1e-8,
        "max_kl": 1e-8,
        "params": {
            "c": [0.0] * 8,
            "l": [[float(v) for v in range(8)]] * k,
            "w": [1.0] * k,
            "b": [0.0] * k,
            "theta": [0.0] * k,
        },
    }


FITS = [
    _fit_row(1, [[-1.0, 0.0, 1.0]], [0.2], [2.0]),
    _fit_row(2, [[2.0, -3.0, 1.0], [0.0, -2.0, 1.0]], [-0.1, 0.1], [1.0, -2.0]),
    _fit_row(1, [[-1.0, 0.0, 1.0]], [0.2], [-2.0], nonmonotone=False),
    _fit_row(2, [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], [0.2, 0.1], [-2.0, 0.0], nonmonotone=False),
    _html_row(1),
    _html_row(2),
]


def _check_axes(fig):
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    for ax in axes:
        assert ax.get_title(), "every panel has a title"
        assert ax.get_xlabel() and ax.get_ylabel(), "every axis is labelled"
        assert ax.lines or ax.patches, "something is drawn"
    return axes


@pytest.mark.parametrize(
    ("builder", "rows"),
    [
        (_plots.oscillations_figure, OSC),
        (_plots.tolerance_figure, TOL),
        (_plots.vocabulary_figure, VOCAB),
        (_plots.encoders_figure, ENC),
        (_plots.temperature_figure, FITS),
        (_plots.coupled_features_figure, FITS),
        (_plots.html_figure, FITS),
        (_plots.seed_temperature_figure, FITS),
    ],
)
def test_figures_are_labelled_and_saved(builder, rows, tmp_path):
    fig = builder(rows)
    axes = _check_axes(fig)
    path = _plots.save(fig, tmp_path / "f.png")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    assert b"Software" not in data  # no version stamp: reproducible bytes
    if builder is _plots.tolerance_figure:
        assert axes[0].get_xscale() == "log" and axes[0].get_yscale() == "log"
        assert "nats" in axes[0].get_xlabel()
        assert axes[0].xaxis_inverted()
    if builder in (_plots.temperature_figure, _plots.coupled_features_figure):
        assert all("°C" in ax.get_xlabel() for ax in axes if "token" not in ax.get_xlabel())
        assert fig.get_suptitle()
    if builder is _plots.vocabulary_figure:
        assert len(axes) == 2


def test_temperature_ratio_panel_highlights_the_peak():
    fig = _plots.temperature_figure(FITS)
    ratio_ax = fig.axes[1]
    assert "log(P(mild) / P(cold))" in ratio_ax.get_ylabel()
    # Target, 1-feature and 2-feature curves, plus the line marking where the target turns.
    assert len(ratio_ax.lines) >= 4
    assert any("cannot follow" in t.get_text() for t in ratio_ax.texts)


def test_coupled_features_contributions_add_up():
    fig = _plots.coupled_features_figure(FITS)
    ax3 = fig.axes[2]
    by_label = {line.get_label(): line for line in ax3.lines}
    y1 = by_label["feature 1"].get_ydata()
    y2 = by_label["feature 2"].get_ydata()
    fit = by_label["sum + bias = fit"].get_ydata()
    np.testing.assert_allclose(fit - y1 - y2, 1.0, atol=1e-5)  # c_mild - c_cold = 1


def test_plot_all_reads_results_files(tmp_path):
    res, figs = tmp_path / "results", tmp_path / "figures"
    for sweep, rows in (("oscillations", OSC), ("tolerance", TOL), ("seed_fits", FITS)):
        ResultsStore(ex.results_path(res, sweep), sweep, record_environment=False).add_many(rows)
    paths = _plots.plot_all(res, figs)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            _plots.FIGURES[k]
            for k in (
                "oscillations",
                "tolerance",
                "temperature",
                "coupled",
                "html",
                "seed_temperature",
            )
        ]
    )
    assert all(p.read_bytes().startswith(PNG) for p in paths)
    # Another mode's figures carry its name: a --full run leaves the quick figures alone.
    full = _plots.plot("oscillations", res, figs, "full")
    assert full == figs / "feature_count_oscillations_full.png" and full.exists()
    assert _plots.plot("vocabulary", res, figs) is None  # no results, no figure
    with pytest.raises(ValueError, match="figure"):
        _plots.plot("nope", res, figs)
