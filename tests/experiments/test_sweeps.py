"""The results store (atomic, resumable) and the sweep runner, with a stand-in feature counter."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jaxfeat import Features
from jaxfeat.experiments import store as _sweep
from jaxfeat.experiments import sweeps as ex
from jaxfeat.experiments.store import ResultsStore, row_id

ROOT = Path(__file__).resolve().parents[2]
# Subprocesses load the store's module file on its own: it needs only the standard library, and
# skipping the JAX import keeps each start well under a second.
_STORE_FILE = ROOT / "jaxfeat" / "experiments" / "store.py"
_LOAD_STORE = textwrap.dedent(f"""
    import importlib.util
    _spec = importlib.util.spec_from_file_location("_sweep", {str(_STORE_FILE)!r})
    _sweep = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_sweep)
""")


# ---------------------------------------------------------------------------------------------
# A stand-in for jaxfeat._count: the theory's N(tol) and a made-up bracket around it, no fitting.


def theory_n(target, tol: float) -> float:
    """N(tol) = (int g^(1/5))^(5/4) (1440 tol)^(-1/4), g = Var_p(z''), by finite differences."""
    t = np.asarray(target.t, float)
    p = np.asarray(target.probs, float)
    if len(t) < 3:
        raise ValueError("a two-point grid has no curvature")
    u = (t - t[0]) / (t[-1] - t[0])
    z = np.log(np.maximum(p, 1e-300))
    d2 = np.gradient(np.gradient(z, u, axis=0), u, axis=0)
    g = np.sum(p * d2**2, axis=1) - np.sum(p * d2, axis=1) ** 2
    dens = np.maximum(g, 0) ** 0.2
    integral = np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(u))
    return float(integral**1.25 * (1440 * tol) ** -0.25)


class FakeCounter:
    """Implements the two calls the runner makes, with the contract's result fields."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def predicted_features(self, target, tol):
        return theory_n(target, tol)

    def required_features_batch(
        self,
        targets,
        tol,
        *,
        metric,
        k_max,
        activation,
        restarts,
        max_steps,
        polish_steps,
        continuity,
        key,
    ):
        self.calls += 1
        time.sleep(self.delay)
        out = []
        for tgt in targets:
            try:
                n = theory_n(tgt, tol)
            except ValueError:
                n = 1.0
            k = max(1, math.ceil(n))
            lb = max(1, k - int(tgt.vocab) % 2)
            ks = np.arange(1, k_max + 1)
            losses = tol * (k / ks) ** 4
            bounds = np.minimum(losses, tol * (lb / ks) ** 4 * 0.9)
            V, kk = int(tgt.vocab), min(k, k_max)
            params = Features.create(np.zeros(V), np.zeros((kk, V)), np.ones(kk), np.zeros(kk))
            fit = SimpleNamespace(
                mean_kl=losses[kk - 1], max_kl=3 * tol, converged=True, params=params
            )
            out.append(
                SimpleNamespace(
                    k=k if k <= k_max else None,
                    lower_bound=min(lb, k_max),
                    segmentation_bound=min(lb, k_max),
                    losses=losses,
                    bounds=bounds,
                    fit=fit if k <= k_max else None,
                    tol=tol,
                    metric=metric,
                    activation=activation,
                )
            )
        return out


TINY = dataclasses.replace(
    ex.QUICK,
    mode="tiny",
    n=24,
    k_max=12,
    restarts=1,
    max_steps=5,
    polish_steps=5,
    batch=2,
    osc_m=(1, 2, 3),
    tol_m=(1, 2),
    tol_tols=(1e-2, 1e-3),
    vocab_sizes=(3, 4),
    vocab_n=24,
    enc_targets=(ex._spec("oscillating", m=1, n=24, vocab=3),),
    fit_ks=(1, 2),
    fit_restarts=1,
    k_max_by_sweep=(),
)


# ---------------------------------------------------------------------------------------------
# Row ids and JSON conversion


def test_row_id_stable_and_order_free():
    a = row_id("s", {"m": 2, "tol": 1e-3, "target": {"n": 8, "family": "x"}})
    b = row_id("s", {"target": {"family": "x", "n": np.int64(8)}, "tol": np.float32(1e-3), "m": 2})
    assert a == b == "s/m=2,target=(family=x,n=8),tol=0.001"
    assert row_id("s", {"x": 0.1 + 0.2}) == row_id("s", {"x": 0.3})
    assert row_id("s", {"m": 1}) != row_id("s", {"m": 2})
    with pytest.raises(ValueError, match="sweep"):
        row_id("a/b", {})


def test_job_ids_are_the_same_in_a_new_process():
    ids = [job.id for job in ex.jobs("tolerance", ex.FULL)]
    code = (
        "from jaxfeat.experiments import sweeps as ex; "
        "print([j.id for j in ex.jobs('tolerance', ex.FULL)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == repr(ids)
    assert len(set(ids)) == len(ids)


def test_jsonable_replaces_nan_and_arrays():
    row = _sweep.jsonable({"a": np.array([1.0, np.nan, np.inf]), "b": (np.float32(0.5), True)})
    assert row == {"a": [1.0, None, None], "b": [0.5, True]}
    json.dumps(row, allow_nan=False)
    with pytest.raises(TypeError):
        _sweep.jsonable({"x": object()})


# ---------------------------------------------------------------------------------------------
# The store


def test_store_roundtrip_resume_and_environment(tmp_path):
    path = tmp_path / "sub" / "s.json"
    store = ResultsStore(path, "s", config={"k_max": 4})
    store.add({"id": "s/m=1", "k": 3, "losses": np.array([0.1, np.nan])})
    store.add_many([{"id": "s/m=2", "k": 5}, {"id": "s/m=1", "k": 4}])  # replaces, no duplicate
    data = json.loads(path.read_text())
    assert [r["id"] for r in data["rows"]] == ["s/m=1", "s/m=2"]
    assert data["rows"][0]["k"] == 4
    env = data["environment"]
    for key in ("jax", "backend", "device", "cpu_count", "platform", "jaxfeat"):
        assert key in env
    again = ResultsStore(path, "s", config={"k_max": 4})
    assert len(again) == 2 and again.done("s/m=2") and "s/m=3" not in again
    assert again.environment == env
    with pytest.raises(ValueError, match="config"):
        ResultsStore(path, "s", config={"k_max": 5})
    with pytest.raises(ValueError, match="sweep"):
        ResultsStore(path, "other", config={"k_max": 4})
    assert len(ResultsStore(path, "s", config={"k_max": 5}, fresh=True)) == 0
    with pytest.raises(ValueError, match="id"):
        again.add({"k": 1})


def test_store_rejects_a_foreign_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        ResultsStore(path, "s", record_environment=False)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="rows"):
        ResultsStore(path, "s", record_environment=False)


def test_exception_between_write_and_replace_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    store = ResultsStore(path, "s", record_environment=False)
    store.add({"id": "s/i=0", "v": 0})
    before = path.read_bytes()

    def broken_replace(src, dst):
        assert Path(src).exists()  # the temporary file was fully written
        raise OSError("simulated crash")

    monkeypatch.setattr(_sweep.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        store.add({"id": "s/i=1", "v": 1})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no stray temporary file
    assert [r["id"] for r in ResultsStore(path, "s", record_environment=False)] == ["s/i=0"]


def test_kill_between_write_and_replace(tmp_path):
    # A real crash at the worst moment: the temporary file is complete, the rename never happens.
    path = tmp_path / "s.json"
    code = _LOAD_STORE + textwrap.dedent(f"""
        import os, signal
        store = _sweep.ResultsStore({str(path)!r}, "s", record_environment=False)
        store.add({{"id": "s/i=0", "v": 0}})
        _sweep.os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        store.add({{"id": "s/i=1", "v": 1}})
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and "s/i=1" in leftovers[0].read_text()
    store = ResultsStore(path, "s", record_environment=False)
    assert [r["id"] for r in store] == ["s/i=0"]
    assert list(tmp_path.iterdir()) == [path]  # the stale temporary file was removed


_WORKER = _LOAD_STORE + textwrap.dedent("""
    import sys, time
    ResultsStore, row_id = _sweep.ResultsStore, _sweep.row_id
    path, n = sys.argv[1], int(sys.argv[2])
    store = ResultsStore(path, "slow", config={"n": n}, record_environment=False)
    for i in range(n):
        rid = row_id("slow", {"i": i})
        if store.done(rid):
            continue
        time.sleep(0.02)
        # Small groups of rows, as the runner saves them.
        store.add_many([{"id": rid, "square": i * i, "pad": "x" * 2000}])
    print("finished")
""")


def test_kill_mid_sweep_and_resume(tmp_path):
    path, n = tmp_path / "slow.json", 40
    cmd = [sys.executable, "-c", _WORKER, str(path), str(n)]
    kills = 0
    for attempt in range(6):
        start = len(json.loads(path.read_text())["rows"]) if path.exists() else 0
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        # Wait until this run has made progress, then kill it at an arbitrary moment.
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(json.loads(path.read_text())["rows"]) if path.exists() else 0
            if done >= start + 5:
                break
            time.sleep(0.005)
        if proc.poll() is None and attempt < 3:
            time.sleep(0.013 * attempt)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            assert proc.returncode == -signal.SIGKILL
            data = json.loads(path.read_text())  # never torn
            assert len(data["rows"]) < n
        else:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            assert b"finished" in out
            break
    assert kills == 3
    rows = json.loads(path.read_text())["rows"]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n
    assert sorted(ids) == sorted(row_id("slow", {"i": i}) for i in range(n))
    assert all(r["square"] == int(r["id"].split("=")[1]) ** 2 for r in rows)


def test_progress_bar_reports_rows(tmp_path, capsys):
    ex.run_sweep("oscillations", tmp_path, TINY, counter=FakeCounter(), progress=True)
    err = capsys.readouterr().err
    n = len(ex.jobs("oscillations", TINY))
    assert "oscillations (tiny)" in err and f"{n}/{n}" in err
    ex.run_sweep("oscillations", tmp_path, TINY, counter=FakeCounter(), progress=False, fresh=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# The runner


def test_affine_rank():
    from jaxfeat import targets

    assert ex.affine_rank(targets.temperature()) == 1
    assert ex.affine_rank(targets.html_closing_tag()) == 1
    tc = targets.tuning_curves(6, 0.1, n=64)
    assert ex.affine_rank(tc) <= tc.vocab - 1
    assert ex.affine_rank(tc, 1e-4) >= ex.affine_rank(tc, 1e-2)
    assert ex.affine_rank(tc, 1e9) == 0


def fake_fit_ks(target, ks, *, restarts, max_steps, key, activation):
    """Stands in for jaxfeat.fit_ks (whose compilation alone takes longer than these tests)."""
    V = int(target.vocab)
    return [
        SimpleNamespace(
            mean_kl=0.1 / k,
            max_kl=0.3 / k,
            converged=True,
            activation=activation,
            params=Features.create(np.zeros(V), np.ones((k, V)), np.ones(k), np.zeros(k)),
        )
        for k in ks
    ]


def test_tolerance_rows_at_the_oscillation_tolerance_are_copied_not_recomputed(tmp_path):
    one = dataclasses.replace(TINY, batch=1)  # one target per call: rows have no neighbours
    fake = FakeCounter()
    ex.run_sweep("oscillations", tmp_path, one, counter=fake, progress=False)
    calls = fake.calls
    ex.run_sweep("tolerance", tmp_path, one, counter=fake, progress=False)
    assert fake.calls - calls == 2  # m = 1, 2 at 1e-2; the 1e-3 rows are the oscillation rows
    osc = {r["id"]: r for r in ex.read_rows(tmp_path, "oscillations")}
    copied = [r for r in ex.read_rows(tmp_path, "tolerance") if "copied_from" in r]
    assert [(r["target"]["m"], r["tol"]) for r in copied] == [(1, 1e-3), (2, 1e-3)]
    for row in copied:
        original = osc[row["copied_from"]]
        assert row["sweep"] == "tolerance" and row["id"] != original["id"]
        assert {k: v for k, v in row.items() if k not in ("id", "sweep", "copied_from")} == {
            k: v for k, v in original.items() if k not in ("id", "sweep")
        }
    # Other fit settings give other numbers: nothing is copied then.
    other = dataclasses.replace(one, k_max_by_sweep=(("tolerance", 11),))
    ex.run_sweep("oscillations", tmp_path / "b", other, counter=fake, progress=False)
    calls = fake.calls
    ex.run_sweep("tolerance", tmp_path / "b", other, counter=fake, progress=False)
    assert fake.calls - calls == 4
    assert not any("copied_from" in r for r in ex.read_rows(tmp_path / "b", "tolerance"))


def test_tiny_sweeps_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    fake = FakeCounter()

    paths = ex.run_sweeps(tmp_path, TINY, counter=fake)
    assert set(paths) == set(ex.SWEEPS)
    for sweep, path in paths.items():
        rows = json.loads(path.read_text())["rows"]
        assert len(rows) == len(ex.jobs(sweep, TINY)), sweep
    osc = ex.read_rows(tmp_path, "oscillations")
    assert [r["target"]["m"] for r in osc] == [1, 2, 3]
    for key in (
        "tol",
        "k",
        "lower_bound",
        "predicted",
        "losses",
        "bounds",
        "seconds",
        "gap",
        "affine_rank",
    ):
        assert key in osc[0]
    assert len(osc[0]["losses"]) == TINY.k_max
    enc = ex.read_rows(tmp_path, "encoders")
    assert {r["activation"] for r in enc} == {"relu", "jumprelu", "softplus", "unconstrained"}
    unc = next(r for r in enc if r["activation"] == "unconstrained")
    assert 1 <= unc["k"] <= unc["V"] - 1
    fits = ex.read_rows(tmp_path, "seed_fits")
    assert [r["k"] for r in fits] == [1, 2] * len(ex.SEED_SPECS)
    assert [r["target"] for r in fits[::2]] == [dict(spec) for spec in ex.SEED_SPECS]
    assert all(b["mean_kl"] < a["mean_kl"] for a, b in zip(fits[::2], fits[1::2], strict=True))
    assert "oscillations (tiny)" in capsys.readouterr().err
    calls = fake.calls
    ex.run_sweeps(tmp_path, TINY, counter=fake, progress=False)
    assert fake.calls == calls  # everything was already done
    with pytest.raises(ValueError, match="config"):
        ex.run_sweep("oscillations", tmp_path, dataclasses.replace(TINY, k_max=13), counter=fake)
    summary = ex.summarize(tmp_path)
    assert "Key statistics" in summary.text and "oscillating(m=2)" in summary.text
    assert summary.stats["gap"]["n"] > 0


def test_runner_killed_mid_sweep_resumes(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests" / "experiments")!r})
        from test_sweeps import FakeCounter, TINY
        from jaxfeat.experiments import sweeps as ex
        ex.run_sweep("oscillations", {str(tmp_path)!r}, TINY, counter=FakeCounter(delay=0.3),
                     progress=False)
    """)
    path = ex.results_path(tmp_path, "oscillations")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and json.loads(path.read_text())["rows"]:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = json.loads(path.read_text())["rows"]
    assert 0 < len(first) < len(TINY.osc_m)  # a group of batch=2 rows, then killed
    fake = FakeCounter()
    ex.run_sweep("oscillations", tmp_path, TINY, counter=fake, progress=False)
    assert fake.calls == 1  # only the missing group ran again
    rows = json.loads(path.read_text())["rows"]
    assert sorted(r["id"] for r in rows) == sorted(j.id for j in ex.jobs("oscillations", TINY))
    assert rows[: len(first)] == first


# ---------------------------------------------------------------------------------------------
# Summary statistics on synthetic rows


def _osc_row(m, tol, k, lb, pred=None):
    return {
        "target": {"family": "oscillating", "m": m},
        "tol": tol,
        "k": k,
        "lower_bound": lb,
        "predicted": pred,
        "bound_certified": True,
    }


def test_gap_stats():
    rows = [
        _osc_row(1, 1e-3, 3, 3),
        _osc_row(2, 1e-3, 6, 5),
        _osc_row(3, 1e-3, 9, 6),
        _osc_row(4, 1e-3, None, 20),
        {"k": 2, "lower_bound": None, "bound_certified": False},
    ]
    g = ex.gap_stats(rows)
    assert g["n"] == 3 and g["censored"] == 1
    assert g["le1"] == pytest.approx(2 / 3) and g["zero"] == pytest.approx(1 / 3)
    assert g["max"] == 3 and g["hist"] == {0: 1, 1: 1, 3: 1}
    assert ex.gap_stats([])["le1"] is None


def test_tolerance_slope_recovers_power_law():
    tols = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4]
    rows = [
        _osc_row(m, tol, 2.0 * m * tol**-0.25, 1.5 * m * tol**-0.25, 2.0 * m * tol**-0.25)
        for m in (1, 2, 4)
        for tol in tols
    ]
    st = ex.tolerance_stats(rows)
    assert st["k"]["pooled"]["slope"] == pytest.approx(-0.25)
    assert st["k"]["pooled"]["n"] == 15
    assert st["k"]["pooled"]["stderr"] == pytest.approx(0, abs=1e-9)

    assert st["lower_bound"]["per_m"][2]["slope"] == pytest.approx(-0.25)
    noisy = ex.loglog_slope(tols, [3, 4, 6, 7, 10], groups=None)
    assert -0.3 < noisy["slope"] < -0.15 and noisy["stderr"] > 0
    assert ex.loglog_slope([1e-3], [3])["slope"] is None


def test_k_per_m():
    rows = [_osc_row(m, 1e-3, 5 * m, 4 * m, 4.5 * m) for m in (1, 2, 4)]
    rows.append(_osc_row(8, 1e-3, None, 30))
    st = ex.k_per_m_stats(rows)[1e-3]
    assert st["mean"] == pytest.approx(5) and st["std"] == pytest.approx(0, abs=1e-12)
    assert st["slope"] == pytest.approx(5) and st["intercept"] == pytest.approx(0, abs=1e-9)
    assert st["predicted_per_m"] == pytest.approx(4.5) and st["censored"] == 1


def test_settings_presets_and_errors(tmp_path):
    for s in (ex.QUICK, ex.FULL):
        assert len(s.tol_tols) >= 5 and max(s.tol_tols) == 1e-2 and min(s.tol_tols) == 1e-4
        assert min(s.vocab_sizes) == 3 and max(s.vocab_sizes) >= 32

        for sweep in ex.SWEEPS:
            ids = [j.id for j in ex.jobs(sweep, s)]
            assert len(ids) == len(set(ids)) > 0
    assert 1e-3 in ex.QUICK.osc_tols and {1e-2, 1e-3, 1e-4} <= set(ex.FULL.osc_tols)
    assert max(ex.FULL.vocab_sizes) == 1000 and max(ex.QUICK.vocab_sizes) == 64
    assert ex.FULL.osc_m == tuple(range(1, 9))
    with pytest.raises(ValueError, match="sweep"):
        ex.run_sweeps(tmp_path, TINY, sweeps=["nope"])
    with pytest.raises(ValueError, match="settings"):
        ex.run_sweep("oscillations", tmp_path, "medium")
    with pytest.raises(ValueError, match="family"):
        ex.make_target({"family": "nope"})


def test_real_counter_tiny_sweep(tmp_path):
    # The real jaxfeat._count path at the smallest sizes: one target, one round of fits.
    pytest.importorskip("jaxfeat._count")
    # Four grid points: a single padded block shape, so the bound compiles once.
    tiny = dataclasses.replace(TINY, n=4, k_max=2, osc_m=(1,), osc_tols=(1e-2,), batch=1)
    path = ex.run_sweep("oscillations", tmp_path, tiny, progress=False)
    (row,) = json.loads(path.read_text())["rows"]
    assert row["lower_bound"] >= 1 and row["bound_certified"]
    assert row["k"] is None or row["k"] >= row["lower_bound"]
    assert len(row["losses"]) == len(row["bounds"]) == 2
    assert row["predicted"] > 0 and row["seconds"] > 0
    # The certified bound never exceeds a fitted loss.
    for bound, loss in zip(row["bounds"], row["losses"], strict=True):
        assert loss is None or bound <= loss + 1e-6


def test_results_file_permissions_follow_umask(tmp_path):
    path = tmp_path / "s.json"
    ResultsStore(path, "s", record_environment=False).add({"id": "s/i=0"})
    assert path.stat().st_mode & 0o777 == 0o666 & ~_sweep._UMASK
