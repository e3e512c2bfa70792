"""`jaxfeat reproduce` recomputes what it reports, resumes only its own interrupted run, and
compares the fresh numbers with the reference (jaxfeat/experiments/cli.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from jaxfeat.experiments import cli
from jaxfeat.experiments import sweeps as ex

from .test_sweeps import TINY as _TINY
from .test_sweeps import FakeCounter, fake_fit_ks

# One row or two per sweep: these tests are about the run's bookkeeping, not the sweeps.
TINY = dataclasses.replace(_TINY, osc_m=(1, 2), tol_m=(1,), tol_tols=(1e-2,), vocab_sizes=(3,))


def _run(tmp_path, counter, **kw):
    return cli.reproduce(
        out=tmp_path / "run",
        figures_dir=tmp_path / "figs",
        reference=tmp_path / "ref",
        settings=TINY,
        counter=counter,
        progress=False,
        **{"toy": False, **kw},
    )


def test_reproduce_recomputes_and_compares(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    first = FakeCounter()
    assert _run(tmp_path, first) == 0
    assert first.calls > 0
    assert cli.load_marker(tmp_path / "run")["status"] == "done"
    n_osc = len(ex.jobs("oscillations", TINY))
    assert len(ex.read_rows(tmp_path / "run", "oscillations")) == n_osc
    assert (tmp_path / "figs" / cli.plots.figure_name("html", TINY.mode)).exists()
    out = capsys.readouterr().out
    assert "a new run" in out and f"oscillations: 0 rows, 0 agree, {n_osc} new" in out

    # The finished run becomes the reference; a second run computes everything again.
    shutil.copytree(tmp_path / "run", tmp_path / "ref")
    second = FakeCounter()
    assert _run(tmp_path, second) == 0
    assert second.calls == first.calls
    out = capsys.readouterr().out
    assert f"oscillations: {n_osc} rows, {n_osc} agree, 0 new, 0 missing" in out


def test_reproduce_resumes_only_an_interrupted_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    monkeypatch.setattr(cli.plots, "plot_all", lambda *a: [])  # figures: the test above
    full = FakeCounter()
    _run(tmp_path, full)
    # Simulate an interruption: the marker still says "running" and one sweep lost its file.
    marker = tmp_path / "run" / "run.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "status": "running"}))
    ex.results_path(tmp_path / "run", "oscillations").unlink()
    resumed = FakeCounter()
    _run(tmp_path, resumed)
    assert "resuming" in capsys.readouterr().out
    assert 0 < resumed.calls < full.calls  # only the missing sweep was recomputed
    again = FakeCounter()
    _run(tmp_path, again, fresh=True)
    assert again.calls == full.calls


def test_reproduce_reuse_is_explicit_and_computes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    assert cli.main(["reproduce", "--reuse", "--reference", str(tmp_path / "ref")]) == 1
    ex.run_sweeps(tmp_path / "ref", TINY, counter=FakeCounter(), progress=False)
    capsys.readouterr()
    counter = FakeCounter()
    assert _run(tmp_path, counter, reuse=True) == 0
    assert counter.calls == 0
    assert "NOTHING IS RECOMPUTED" in capsys.readouterr().out
    assert (tmp_path / "figs" / cli.plots.figure_name("oscillations", TINY.mode)).exists()


def test_reproduce_runs_and_compares_the_toy_models(tmp_path, capsys, monkeypatch):
    # The toy sweeps themselves are tested in test_toy_models.py, the workers that share them
    # with the sweeps in test_workers.py; here: reproduce in one process trains the mode's
    # preset into its own run directory, draws it, and compares it with its reference.
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    monkeypatch.setattr(cli.plots, "plot_all", lambda *a: [])
    calls, drawn = [], []

    def compute(settings, out, **kw):
        calls.append((settings, out))
        out.mkdir(parents=True, exist_ok=True)
        for sweep in cli.toy_models.SWEEPS:
            (out / f"{sweep}.json").write_text("{}")

    monkeypatch.setattr(cli.toy_models, "compute", compute)
    monkeypatch.setattr(
        cli.toy_models, "figures", lambda settings, out, figs: drawn.append((settings, out)) or []
    )
    monkeypatch.setattr(cli.toy_models, "compare", lambda ref, run: f"compared {run}")
    assert _run(tmp_path, FakeCounter(), toy=True) == 0
    toy_out = tmp_path / "run" / "toy_models"
    assert calls == [(cli.toy_models.QUICK, toy_out)]
    assert drawn == [(cli.toy_models.QUICK, toy_out)]
    out = capsys.readouterr().out
    assert "Trained toy models against the reference" in out
    assert f"compared {toy_out}" in out
    # Toy models that end without their results fail the run, which stays resumable.
    monkeypatch.setattr(cli.toy_models, "compute", lambda settings, out, **kw: None)
    with pytest.raises(RuntimeError, match="no toy-model results"):
        _run(tmp_path, FakeCounter(), toy=True, fresh=True)
    assert cli.load_marker(tmp_path / "run")["status"] == "running"
