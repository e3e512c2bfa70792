"""Several processes on 127.0.0.1 (jax.distributed, gloo collectives on CPU): fits, counts and
sweeps give what one process gives, and a killed job resumes without losing finished rows."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import signal
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxfeat
from jaxfeat import targets
from jaxfeat.experiments import launch
from jaxfeat.experiments import store as _store
from jaxfeat.experiments import sweeps as ex

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for a whole job, compilation included

# Every worker joins the job from the command line LocalJob gives it.
_JOIN = textwrap.dedent("""
    import argparse, sys
    from jaxfeat.experiments import launch
    _parser = argparse.ArgumentParser()
    _parser.add_argument("out")
    launch.add_distributed_arguments(_parser)
    ARGS = _parser.parse_args()
    PROCS = launch.start_distributed(ARGS)
""")


def _run(code: str, out: Path, n: int = 2) -> list:
    job = launch.LocalJob(["python", "-c", _JOIN + textwrap.dedent(code), str(out)], n, cwd=ROOT)
    done = job.finish(TIMEOUT)
    for i, f in enumerate(done):
        assert f.returncode == 0, f"process {i} failed:\n{f.stderr[-3000:]}"
    return done


# ---------------------------------------------------------------------------------------------
# Fits and counts: every process gets the one-process result, bit for bit

N = 40


def _problem():
    curves = [targets.oscillating(1, n=N)] + [targets.random_smooth(s, 2, 3, n=N) for s in (0, 1)]
    return curves, np.stack([c.probs for c in curves])


# Seven fits over two processes: shares of four, the second padded. A count of two curves fits
# rows of the same shape (two curves, four counts each, padded to eight), so all of it compiles
# one kernel.
KS = [2, 3, 2, 1, 3, 2, 4]
FIT = dict(restarts=2, max_steps=20, k_max=8)


def _fits():
    """The calls both runs make: an odd batch and a count whose search decides from the gathered
    fits and bounds."""
    curves, probs = _problem()
    fit = jaxfeat.fit_batch(curves[0].t, probs[np.arange(7) % 3], KS, **FIT)
    counts = jaxfeat.required_features_batch(curves[:2], 3e-2, k_max=4, restarts=2, max_steps=20)
    return {
        "fit": jax.tree.leaves(fit),
        "counts": [
            (r.k, r.lower_bound, r.segmentation_bound, r.losses, r.bounds)
            + (tuple(jax.tree.leaves(r.fit)) if r.fit is not None else ())
            for r in counts
        ],
    }


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(la, lb, strict=True)
    )


def test_fits_and_counts_over_two_processes_match_one_process(tmp_path):
    done = _run(
        f"""
        import pickle, numpy as np, jaxfeat
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_distributed import _fits
        assert PROCS.count == 2 and jaxfeat.distributed.spreading()
        x = np.array([1 / 3, 2.0], np.float64)  # gathered as bytes: float64 stays float64
        g = jaxfeat.distributed.gather(x[None] * (1 + PROCS.index), 2)
        assert g.dtype == np.float64 and np.array_equal(g, np.stack([x, 2 * x])), g
        with open(f"{{ARGS.out}}/{{PROCS.index}}.pkl", "wb") as f:
            pickle.dump(_fits(), f)
        """,
        tmp_path,
    )
    assert all(f.returncode == 0 for f in done)
    one = _fits()
    for i in range(2):
        with open(tmp_path / f"{i}.pkl", "rb") as f:
            assert _same(pickle.load(f), one), f"process {i} differs from one process"


def test_the_comparison_sees_a_misordered_gather():
    # The check above must be able to fail: the same fits in another order (the shares gathered
    # in the wrong order) are rejected.
    one = _fits()
    swapped = {**one, "counts": one["counts"][::-1]}
    assert _same(one, one) and not _same(one, swapped)


def test_large_batches_stream_in_chunks_with_the_same_result():
    # Members in lanes of one width do not depend on each other: with the lanes capped (as in
    # any batch of more than a few hundred members), chunks give the one-call result exactly.
    curves, probs = _problem()
    probs = probs[np.arange(7) % 3]
    per_member = N * (FIT["k_max"] + 1) * 3 * 4
    lanes = jaxfeat.SolverSettings(cpu_lane_bytes=4 * per_member)
    whole = jaxfeat.fit_batch(curves[0].t, probs, KS, solver=lanes, **FIT)
    # A budget of four targets per chunk: two chunks, the last one padded.
    small = dataclasses.replace(lanes, chunk_bytes=4 * 4 * FIT["restarts"] * per_member)
    chunked = jaxfeat.fit_batch(curves[0].t, probs, KS, solver=small, progress=False, **FIT)
    assert _same(whole, chunked)


# ---------------------------------------------------------------------------------------------
# Sweeps: each process computes its share of rows; the store ends with every row once

sys.path.insert(0, str(ROOT / "tests" / "experiments"))
from test_sweeps import TINY, FakeCounter  # noqa: E402

# Six oscillation rows: a process killed after its first row has more to do.
ONE_PER_CALL = dataclasses.replace(TINY, batch=1, osc_m=(1, 2, 3, 4, 5, 6))
SWEEPS = ("oscillations", "tolerance")
_TIMING = ("seconds", "batch_seconds", "predict_seconds")

_SWEEP = f"""
    import os
    sys.path.insert(0, {str(ROOT / "tests")!r})
    from test_distributed import FakeCounter, ONE_PER_CALL, SWEEPS
    from jaxfeat.experiments import sweeps as ex
    ex.run_sweeps(ARGS.out, ONE_PER_CALL, sweeps=SWEEPS, progress=False, processes=PROCS,
                  counter=FakeCounter(delay=float(os.environ.get("ROW_DELAY", "0"))))
"""


def _rows(results: Path, sweep: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in ex.read_rows(results, sweep)]


def test_sweep_over_two_processes_matches_one_process(tmp_path):
    _run(_SWEEP, tmp_path / "two")
    one = tmp_path / "one"
    ex.run_sweeps(one, ONE_PER_CALL, sweeps=SWEEPS, counter=FakeCounter(), progress=False)
    for sweep in SWEEPS:
        two = _rows(tmp_path / "two", sweep)
        assert two == _rows(one, sweep)  # same rows, same order, each once
        assert [r["id"] for r in two] == [j.id for j in ex.jobs(sweep, ONE_PER_CALL)]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        f"{s}.json" for s in SWEEPS
    )  # the parts were merged and removed


def test_a_killed_job_resumes_without_losing_finished_rows(tmp_path):
    out = tmp_path / "run"
    job = launch.LocalJob(
        ["python", "-c", _JOIN + textwrap.dedent(_SWEEP), str(out)],
        2,
        cwd=ROOT,
        env={"ROW_DELAY": "0.5"},
    )
    part = out / "oscillations.process-1.json"
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and job.procs[1].poll() is None:
            if part.exists() and json.loads(part.read_text())["rows"]:
                break
            time.sleep(0.02)
        assert job.procs[1].poll() is None, job.finish(1)[1].stderr[-3000:]
        os.kill(job.procs[1].pid, signal.SIGKILL)
        job.procs[1].wait()
        time.sleep(1.0)  # process 0 goes on with its own rows, then waits for its peer
    finally:
        job.kill()  # the job is stopped, as a scheduler stops a job whose task died
    finished = {
        r["id"]: r
        for p in _store.parts(ex.results_path(out, "oscillations"))
        for r in json.loads(p.read_text())["rows"]
    }
    assert finished and len(finished) < len(ex.jobs("oscillations", ONE_PER_CALL))
    _run(_SWEEP, out)  # the restarted job
    for sweep in SWEEPS:
        rows = ex.read_rows(out, sweep)
        assert [r["id"] for r in rows] == [j.id for j in ex.jobs(sweep, ONE_PER_CALL)]
    after = {r["id"]: r for r in ex.read_rows(out, "oscillations")}
    for rid, row in finished.items():
        assert after[rid] == row  # kept as written, timings included: not computed again
    assert not _store.parts(ex.results_path(out, "oscillations"))


def test_processes_split_rows_without_overlap(tmp_path):
    ids = [f"s/i={i}" for i in range(7)]
    stores = [
        _store.ResultsStore(
            tmp_path / "s.json",
            "s",
            record_environment=False,
            processes=_store.Processes(i, 3, barrier=lambda name: None),
        )
        for i in range(3)
    ]
    shares = [s.mine(ids) for s in stores]
    assert sorted(i for share in shares for i in share) == sorted(ids)
    assert [len(s) for s in shares] == [3, 2, 2]
    # Rows that share one call (a target's seed fits) stay together.
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    shares = [s.mine(ids, groups) for s in stores]
    assert shares == [ids[:2] + ids[6:], ids[2:3], ids[3:6]]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--coordinator", "127.0.0.1:1"], "together"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "host:port"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "0 to"),
    ],
)
def test_bad_job_options_name_the_fix(argv, match):
    parser = argparse.ArgumentParser()
    launch.add_distributed_arguments(parser)
    with pytest.raises(ValueError, match=match):
        launch.start_distributed(parser.parse_args(argv))
