"""Local workers take a run's rows by claiming them: every row is computed once, by one worker,
and the merged files equal a one-process run's (jaxfeat/experiments/workers.py, store.claim)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from jaxfeat.experiments import cli, store, workers
from jaxfeat.experiments import sweeps as ex

from .test_cli import TINY as _TINY
from .test_sweeps import FakeCounter, fake_fit_ks

# One target per call, as in the presets: a row's numbers do not depend on who computes it.
TINY = dataclasses.replace(_TINY, batch=1, tol_m=(1, 2), tol_tols=(1e-2, 1e-3))
# What a row is, less what depends on when and where it was computed.
_VOLATILE = ("seconds", "predict_seconds", "batch_seconds")


def _rows(run):
    return {
        s: [{k: v for k, v in r.items() if k not in _VOLATILE} for r in ex.read_rows(run, s)]
        for s in ex.SWEEPS
    }


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/maps")
def test_release_compiled_drops_programs_only_past_its_share_of_the_mapping_limit(capsys):
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.sin(x) + 1)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    assert not store.release_compiled(share=1.0)  # a process never holds the whole limit
    assert f._cache_size() == 1
    assert store.release_compiled(share=0.0)  # every process holds some mappings
    assert f._cache_size() == 0
    assert "memory mappings in use" in capsys.readouterr().err
    assert float(f(jnp.ones(3))[0]) == pytest.approx(1.8414710)  # compiles again


def test_a_claim_is_granted_once_among_concurrent_callers(tmp_path):
    granted = []
    barrier = threading.Barrier(8)

    def take():
        barrier.wait()
        granted.append(store.claim(tmp_path / "claims", "the same row"))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(granted) == [False] * 7 + [True]
    # Removing the claims (before a job starts) makes every key claimable again.
    workers.reset(tmp_path)
    assert store.claim(tmp_path / "claims", "the same row")


def test_concurrent_workers_compute_each_row_once_and_merge_to_the_one_process_rows(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    alone = FakeCounter()
    ex.run_sweeps(tmp_path / "one", TINY, counter=alone, progress=False)

    shared = FakeCounter(delay=0.002)  # lets the two workers interleave
    run = tmp_path / "two"
    threads = [
        threading.Thread(target=workers.work, args=(run, i, 2, TINY), kwargs={"counter": shared})
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.calls == alone.calls  # no row twice, the copied rows not at all
    parts = {p.name for p in run.glob("*.process-*.json")}
    assert {"oscillations.process-1.json", "oscillations.process-2.json"} <= parts
    workers.merge(run, 2, TINY, counter=shared)
    assert shared.calls == alone.calls  # the merge computes nothing
    assert not list(run.glob("*.process-*.json"))
    assert _rows(run) == _rows(tmp_path / "one")
    copied = [r for r in ex.read_rows(run, "tolerance") if "copied_from" in r]
    assert [(r["target"]["m"], r["tol"]) for r in copied] == [(1, 1e-3), (2, 1e-3)]


def test_a_worker_resumes_past_the_rows_stored_and_merge_computes_the_unclaimed(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    run = tmp_path / "run"
    first = FakeCounter()
    workers.work(run, 0, 2, TINY, counter=first)
    # Interrupted before the merge; the next start removes the claims and resumes.
    workers.reset(run)
    again = FakeCounter()
    workers.work(run, 1, 2, TINY, counter=again)
    assert first.calls > 0 and again.calls == 0
    # A row no worker claimed (here: its stored copy lost) is computed by the merge itself.
    ex.results_path(run, "examples").with_name("examples.process-1.json").unlink()
    workers.reset(run)
    claimed = FakeCounter()
    workers.merge(run, 2, TINY, counter=claimed)
    assert claimed.calls == len(ex.jobs("examples", TINY))
    assert len(ex.read_rows(run, "examples")) == len(ex.jobs("examples", TINY))


def test_reproduce_with_workers_shares_the_toy_models_and_merges_them(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("jaxfeat.fit_ks", fake_fit_ks)
    monkeypatch.setattr(cli.plots, "plot_all", lambda *a: [])
    trained = []

    def compute(settings, out, *, processes, claims):  # the real one: test_toy_models.py
        trained.append((settings, out, processes.index, processes.count, claims))
        if processes.index == 0:  # the merge writes the files
            out.mkdir(parents=True, exist_ok=True)
            for sweep in cli.toy_models.SWEEPS:
                (out / f"{sweep}.json").write_text("{}")

    monkeypatch.setattr(cli.toy_models, "compute", compute)
    monkeypatch.setattr(cli.toy_models, "figures", lambda *a: [])
    monkeypatch.setattr(cli.toy_models, "compare", lambda ref, run: f"compared {run}")
    counter = FakeCounter()

    def start(run, count, settings, *, toy):  # the workers, one after the other, in-process
        assert (count, settings) == (2, TINY)
        for i in range(count):
            workers.work(run, i, count, settings, toy=cli.toy_models.QUICK, counter=counter)
        return [SimpleNamespace(wait=lambda: 0, returncode=0)] * count

    monkeypatch.setattr(cli._workers, "start", start)
    kw = dict(figures_dir=tmp_path / "figs", reference=tmp_path / "ref", settings=TINY)
    assert cli.reproduce(out=tmp_path / "run", counter=counter, workers=2, **kw) == 0
    # Each worker takes toy models after its rows (by claims), then the caller merges.
    run = tmp_path / "run"
    toy = (cli.toy_models.QUICK, run / "toy_models")
    assert trained == [(*toy, i, 3, run / workers.CLAIMS) for i in (1, 2, 0)]
    out = capsys.readouterr().out
    assert "2 worker processes" in out and "compared" in out
    alone = FakeCounter()
    cli.reproduce(out=tmp_path / "alone", counter=alone, toy=False, **kw)
    assert alone.calls == counter.calls
    assert _rows(tmp_path / "run") == _rows(tmp_path / "alone")
    with pytest.raises(ValueError, match="workers=0 must be an int >= 1"):
        cli.reproduce(out=tmp_path / "x", counter=alone, workers=0, **kw)


def test_reproduce_raises_with_the_log_of_a_failed_worker_and_stays_resumable(
    tmp_path, monkeypatch
):
    killed = []

    def start(run, count, settings, *, toy):
        workers.log_path(run, 1).parent.mkdir(parents=True, exist_ok=True)
        workers.log_path(run, 1).write_text("Traceback ...\nValueError: a row failed\n")
        return [
            SimpleNamespace(wait=lambda: 0, returncode=0, kill=lambda: killed.append(0)),
            SimpleNamespace(wait=lambda: 3, returncode=3, kill=lambda: killed.append(1)),
        ]

    monkeypatch.setattr(cli._workers, "start", start)
    with pytest.raises(RuntimeError, match="worker 1 failed .exit code 3(.|\n)*a row failed"):
        cli.reproduce(
            out=tmp_path / "run",
            figures_dir=tmp_path / "figs",
            reference=tmp_path / "ref",
            settings=TINY,
            counter=FakeCounter(),
            progress=False,
            workers=2,
        )
    assert sorted(killed) == [0, 1]
    assert cli.load_marker(tmp_path / "run")["status"] == "running"


def test_worker_processes_run_the_presets_from_the_command_line(tmp_path, monkeypatch):
    shown = subprocess.run(
        [sys.executable, "-m", "jaxfeat.experiments.workers", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--index" in shown and "--no-toy" in shown
    commands = []
    monkeypatch.setattr(workers.subprocess, "Popen", lambda cmd, **kw: commands.append(cmd))
    workers.start(tmp_path, 2, ex.FULL, toy=False)
    assert [c[1:] for c in commands] == [
        ["-m", "jaxfeat.experiments.workers", "--run", str(tmp_path), "--index", str(i),
         "--count", "2", "--full", "--no-toy"]
        for i in range(2)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="settings must be a preset"):
        workers.start(tmp_path, 2, TINY, toy=False)
    ran = []
    monkeypatch.setattr(workers, "pin", lambda i, n: ran.append(("pin", i, n)))
    monkeypatch.setattr(workers, "work", lambda run, i, n, s, **kw: ran.append((i, n, s.mode)))
    workers.main(["--run", str(tmp_path), "--index", "1", "--count", "2"])
    assert ran == [("pin", 1, 2), (1, 2, "quick")]
    with pytest.raises(SystemExit):
        workers.main(["--run", str(tmp_path), "--index", "2", "--count", "2"])


@pytest.mark.skipif(
    not hasattr(workers.os, "sched_setaffinity") or len(workers.usable_cores()) < 2,
    reason="pinning needs Linux and two cores",
)
def test_a_pinned_worker_runs_on_its_share_of_the_cores():
    cores = workers.usable_cores()
    code = "import os, sys; from jaxfeat.experiments import workers; "
    code += "workers.pin(1, 2); print(sorted(os.sched_getaffinity(0)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(cores[1::2])
