"""The count and fit commands end to end on a small CSV curve: parsing, JSON, figures, errors.

One module-scoped run of each command (T = 32, V = 3, restarts = 4) pays for the fit kernels'
compilation once; every other test reuses those shapes or fits nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import warnings
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest

import jaxfeat
from jaxfeat.experiments import commands, plots

PNG = b"\x89PNG\r\n\x1a\n"
TOKENS = ("none", "sin", "cos")
K_MAX, RESTARTS, FIT_K = 8, 4, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxfeat")
    commands.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command line."""
    args = _parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs ``count`` and ``fit`` once each through the parsers, keeping what they drew."""
    d = tmp_path_factory.mktemp("commands")
    target = jaxfeat.targets.oscillating(1, n=32)
    csv_path = commands.write_csv(d / "osc.csv", target, tokens=TOKENS)
    drawn = []  # (target, FitResult or None, Figure) per figure, in order
    real_figure = commands.curve_figure

    def spy(tgt, result, **kwargs):
        fig = real_figure(tgt, result, **kwargs)
        drawn.append((tgt, result, fig))
        return fig

    out = {}
    with mock.patch.object(commands, "curve_figure", spy):
        out["count"] = _run(
            [
                "count",
                str(csv_path),
                "--k-max",
                str(K_MAX),
                "--restarts",
                str(RESTARTS),
                "--json",
                str(d / "count.json"),
                "--figure",
                str(d / "count.png"),
            ]
        )
        out["fit"] = _run(
            [
                "fit",
                str(csv_path),
                "--k",
                str(FIT_K),
                "--restarts",
                str(RESTARTS),
                "--json",
                str(d / "out" / "fit.json"),
                "--figure",
                str(d / "out" / "fit.png"),
            ]
        )
    return SimpleNamespace(
        dir=d,
        csv=csv_path,
        target=target,
        out=out,
        drawn=drawn,
        count=json.loads((d / "count.json").read_text()),
        fit=json.loads((d / "out" / "fit.json").read_text()),
    )


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parser_defaults():
    args = _parser().parse_args(["count", "curve.csv"])
    assert (args.file, args.tol, args.kind, args.k_max, args.restarts, args.seed) == (
        "curve.csv",
        1e-3,
        "probs",
        64,
        16,
        0,
    )
    assert args.json is None and args.figure is None and callable(args.func)
    args = _parser().parse_args(
        [
            "fit",
            "c.npz",
            "--k",
            "2",
            "--kind",
            "logits",
            "--seed",
            "3",
            "--json",
            "o.json",
            "--figure",
            "o.png",
        ]
    )
    assert (args.file, args.k, args.kind, args.seed, args.json, args.figure) == (
        "c.npz",
        2,
        "logits",
        3,
        "o.json",
        "o.png",
    )
    assert not hasattr(args, "tol") and not hasattr(args, "k_max")


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "c.csv"],  # --k is required
        ["fit", "c.csv", "--k", "0"],
        ["count", "c.csv", "--kind", "density"],
        ["count", "c.csv", "--tol", "-1"],
        ["count", "c.csv", "--tol", "nan"],
        ["count", "c.csv", "--k-max", "two"],
        ["count"],
    ],
)
def test_parser_rejects(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# count


def test_count_json(runs):
    code, _, err = runs.out["count"]
    assert code == 0, err
    out = runs.count
    for key in (
        "file",
        "kind",
        "T",
        "V",
        "tokens",
        "tol",
        "metric",
        "k",
        "lower_bound",
        "gap",
        "mean_kl",
        "max_kl",
        "converged",
        "losses",
        "bounds",
        "params",
        "kl",
    ):
        assert key in out, key
    assert (out["file"], out["kind"], out["T"], out["V"]) == (str(runs.csv), "probs", 32, 3)
    assert out["tokens"] == list(TOKENS) and out["tol"] == 1e-3 and out["metric"] == "mean_kl"
    k, lb = out["k"], out["lower_bound"]
    assert isinstance(k, int) and 1 <= lb <= k <= K_MAX
    assert out["gap"] == k - lb and out["proven"] == (k == lb)
    assert out["mean_kl"] <= 1e-3 and out["max_kl"] >= out["mean_kl"]
    assert len(out["losses"]) == len(out["bounds"]) == K_MAX
    assert out["losses"][k - 1] == pytest.approx(out["mean_kl"])
    assert all(x is None for x in out["losses"][: lb - 1])  # certified out, never fitted
    bounds = np.array(out["bounds"])
    assert np.all(np.diff(bounds) <= 0) and np.all(bounds[: lb - 1] > 1e-3)
    assert bounds[k - 1] <= out["mean_kl"] + 1e-7
    p = out["params"]
    assert np.shape(p["c"]) == (3,) and np.shape(p["l"]) == (k, 3)
    assert np.shape(p["w"]) == np.shape(p["b"]) == np.shape(p["theta"]) == (k,)
    assert len(out["kl"]) == 32 and np.mean(out["kl"]) == pytest.approx(out["mean_kl"], rel=1e-4)


def test_count_params_reproduce_the_fit(runs):
    p = runs.count["params"]
    feats = jaxfeat.Features.create(p["c"], p["l"], p["w"], p["b"], p["theta"])
    q = jaxfeat.log_probs(feats, runs.target.t)
    kl = jaxfeat.kl(runs.target.probs, q)
    np.testing.assert_allclose(np.asarray(kl), runs.count["kl"], rtol=1e-3, atol=1e-6)


def test_count_prints_the_bracket(runs):
    _, stdout, err = runs.out["count"]
    assert err == ""
    line = stdout.splitlines()[0]
    k, lb = runs.count["k"], runs.count["lower_bound"]
    assert line.startswith(f"{runs.csv}: ")
    assert "for mean KL <= 0.001 nats" in line
    if k == lb:
        assert f"k = {k} is proven: the certified lower bound equals the fitted count" in line
    else:
        assert f"{lb} <= k <= {k} features" in line and f"k = {k} reaches" in line
    assert f"wrote {runs.dir / 'count.json'}" in stdout
    assert f"wrote {runs.dir / 'count.png'}" in stdout


def _check_figure(fig, name, k):
    axes = fig.axes
    assert len(axes) == 3
    for ax in axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        assert "[" in ax.get_xlabel()  # units
    assert [ax.get_title()[:3] for ax in axes] == ["(a)", "(b)", "(c)"]
    assert "nats" in axes[1].get_ylabel() and "probability" in axes[0].get_ylabel()
    title = fig.get_suptitle()
    assert name in title and f"k = {k} features" in title and "mean KL" in title
    V = 3
    assert len(axes[0].get_lines()) == 2 * V  # target and fit per token
    assert sum(ln.get_linestyle() == "--" for ln in axes[1].get_lines()) == V - 1
    assert len(axes[2].get_lines()) >= k  # one profile per feature (plus knot markers)


def test_count_figure(runs):
    assert (runs.dir / "count.png").read_bytes()[:8] == PNG
    tgt, result, fig = runs.drawn[0]
    assert result is not None and result.params.l.shape == (runs.count["k"], 3)
    assert tgt.tokens == TOKENS
    _check_figure(fig, "osc.csv", runs.count["k"])


def test_count_python_api_matches_the_cli(runs, capsys):
    out = commands.count(
        runs.csv, 1e-3, k_max=K_MAX, restarts=RESTARTS, json_out=runs.dir / "api.json"
    )
    assert out == runs.count  # same seed, same answer; the JSON holds the returned dict
    assert json.loads((runs.dir / "api.json").read_text()) == out
    assert capsys.readouterr().out.startswith(f"{runs.csv}: ")


def test_count_not_reached(runs, tmp_path, capsys):
    # Every k <= 2 is certified insufficient: nothing is fitted, the figure shows the target.
    out = commands.count(
        runs.csv, 1e-3, k_max=2, figure_out=tmp_path / "none.png", json_out=tmp_path / "none.json"
    )
    assert out["k"] is None and out["lower_bound"] == 3 and out["gap"] is None
    assert out["params"] is None and out["losses"] == [None, None]
    assert json.loads((tmp_path / "none.json").read_text())["k"] is None
    assert (tmp_path / "none.png").read_bytes()[:8] == PNG
    assert "k >= 3 features" in capsys.readouterr().out


def test_outputs_leave_no_temporary_files(runs):
    names = sorted(p.name for p in runs.dir.rglob("*") if p.is_file())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert {"osc.csv", "count.json", "count.png", "fit.json", "fit.png"} <= set(names)


# ---------------------------------------------------------------------------------------------
# fit


def test_fit_json(runs):
    code, stdout, err = runs.out["fit"]
    assert code == 0, err
    out = runs.fit
    assert out["k"] == FIT_K and out["T"] == 32 and out["tokens"] == list(TOKENS)
    assert "lower_bound" not in out and "gap" not in out
    assert 0 <= out["bound"] <= out["mean_kl"] + 1e-7 <= out["max_kl"] + 1e-7
    assert np.shape(out["params"]["l"]) == (FIT_K, 3)
    # The certified floor at k is the one count used.
    assert out["bound"] == pytest.approx(runs.count["bounds"][FIT_K - 1])
    line = stdout.splitlines()[0]
    assert line.startswith(f"{runs.csv}: k = {FIT_K} features reach mean KL ")
    assert "certified: no 3-feature model goes below" in line


def test_fit_figure(runs):
    assert (runs.dir / "out" / "fit.png").read_bytes()[:8] == PNG
    _, result, fig = runs.drawn[1]
    assert result.params.l.shape == (FIT_K, 3)
    _check_figure(fig, "osc.csv", FIT_K)


# ---------------------------------------------------------------------------------------------
# Figures with zero probabilities; CSV export


def test_figure_masks_zero_probabilities(runs):
    p = np.array(runs.target.probs, np.float64)
    p[5:9, 1] = 0.0  # "sin" absent at a few points, "none" (the reference) at others
    p[20:23, 0] = 0.0
    zeros = jaxfeat.Target(runs.target.t, p / p.sum(1, keepdims=True), TOKENS)
    result = runs.drawn[1][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no log(0), no divide by zero
        fig = commands.curve_figure(zeros, result, name="zeros.csv")
        plots.save(fig, runs.dir / "zeros.png")
        commands.curve_figure(zeros, None)
    target_lines = [ln for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "-"]
    sin = np.asarray(target_lines[0].get_ydata(), float)
    assert np.all(np.isnan(sin[5:9])) and np.all(np.isnan(sin[20:23]))
    assert np.all(np.isfinite(np.delete(sin, [*range(5, 9), *range(20, 23)])))


def test_write_csv_round_trip(runs):
    back = jaxfeat.read_curve(runs.csv)
    assert back.tokens == TOKENS
    np.testing.assert_array_equal(np.asarray(back.t), np.asarray(runs.target.t))
    np.testing.assert_array_equal(np.asarray(back.probs), np.asarray(runs.target.probs))


# ---------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit code 2, nothing written


@pytest.mark.parametrize("command", [["count"], ["fit", "--k", "2"]])
def test_bad_file_exit_code(tmp_path, command):
    bad = tmp_path / "bad.csv"
    bad.write_text("t,a,b\n0,0.5,0.5\n1,0.5,oops\n")
    code, stdout, err = _run(
        [command[0], str(bad), *command[1:], "--json", str(tmp_path / "o.json")]
    )
    assert code == 2
    assert err == f"jaxfeat: error: {bad}: row 3, column 'b': 'oops' is not a number.\n"
    assert "Traceback" not in err and stdout == ""
    assert not (tmp_path / "o.json").exists()


def test_missing_and_unknown_files_exit_code(tmp_path):
    code, _, err = _run(["count", str(tmp_path / "nowhere.csv")])
    assert code == 2 and err.startswith("jaxfeat: error: ") and "nowhere.csv" in err
    (tmp_path / "curve.tsv").write_text("t\ta\tb\n")
    code, _, err = _run(["fit", str(tmp_path / "curve.tsv"), "--k", "1"])
    assert code == 2 and "'.tsv'" in err and ".csv" in err and ".npz" in err
