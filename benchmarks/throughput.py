"""Throughput of jaxfeat's fitting engine against two baselines, on the same loss and targets.

Methods (same model, loss = mean over the grid of KL(p(t) || q(t)), same k and restarts):

* ``jaxfeat``: :func:`jaxfeat.fit` / :func:`jaxfeat.fit_batch` / :func:`jaxfeat.fit_ks` with
  defaults (float32).
* ``scipy_lbfgsb``: ``scipy.optimize.minimize(method="L-BFGS-B")`` per restart, serially, on the
  public parameters (c, l, w, b) with a jitted float64 JAX value-and-gradient, stopped by
  jaxfeat's stall rule. It starts from jaxfeat's least-squares starting points, read off the
  public API (:func:`jaxfeat_start`): restart 0 where jaxfeat's own first restart starts,
  the others at random knots.
* ``optax_lbfgs``: ``optax.lbfgs()`` vmapped over targets and restarts for a fixed number of
  steps, on (c, l, w, b) from a random initialisation: the first thing a JAX user writes.

Workloads: one target (``oscillating(2)``, k = 8, 16 restarts); a batch of 256 targets
(``random_smooth``, bandwidth 1..4, V = 3, T = 256, k = 8, 16 restarts); a k = 1..32 sweep on one
target (:func:`jaxfeat.fit_ks`); scaling of jaxfeat in batch size, k, T and V; the cost of one
Gauss-Newton step inside the fit, against a loss evaluation, a gradient and a Cholesky solve; and
large vocabularies (``large_vocab``: ``random_smooth(0, 3, V)``, T = 256, k = 8, 8 restarts, V =
30..10000): the default fit's quality, time and memory across the switch from dense to
matrix-free Gauss-Newton and its growth law in V, side by side with the old paths (optax L-BFGS,
forced dense Gauss-Newton) and long dense runs, the certified segmentation bound at k = 6..12
with its default token buckets against the fits, and the buckets' tightness against the exact
one-bucket bound at small V.

Only jaxfeat's public API is used. XLA's buffer sizes come from the public call compiled as one
program (``jax.jit(fit_batch).lower(...).compile().memory_analysis()``); the cost of a step
inside the fit comes from fits at two step budgets with the stall check switched off through
:class:`jaxfeat.SolverSettings` (so every member takes a known number of steps).

Timing: every call is timed to ``block_until_ready``. A first call's compile time comes from JAX's
own compile-duration events (tracing + lowering + XLA compilation); "warm" is a repeated call, or,
where a repeat would be too slow, the first call minus its compile time (``warm_method`` says
which); ``warm_compile_s`` flags warm calls that compiled again. Losses of all methods are
re-evaluated by one float64 NumPy function. Baselines too slow to run on the whole batch run on a
documented subset and are extrapolated; the JSON says so.

Usage::

    python benchmarks/throughput.py [--quick | --smoke] [--out PATH] [--device-label LABEL]
        [--sections single,batch,ks,scaling,breakdown,large_vocab] [--resume]

``--quick`` runs small sizes in a few minutes; the full run takes about a quarter of an hour on
two CPU cores for the first five sections and about twenty minutes more for ``large_vocab``;
``--smoke`` runs tiny sizes (compilation dominates) to check that every section works, and writes
to a temporary file unless ``--out`` is given. Results are written atomically after every
section; ``--resume`` keeps every section the file already holds (from a run of the same mode)
and runs the asked-for ones it lacks, e.g. one new section into the committed results::

    python benchmarks/throughput.py --sections large_vocab --resume \\
        --out benchmarks/results/throughput_cpu.json
"""

from __future__ import annotations

import os

# SciPy's OpenBLAS threads spin-wait and fight XLA's thread pool for the cores: on 2 cores every
# tiny BLAS call inside L-BFGS-B then costs milliseconds (about 30x slower overall). One BLAS
# thread is the SciPy baseline at its best; XLA does not use OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import functools
import importlib.metadata
import inspect
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy
from scipy.optimize import minimize

import jaxfeat
from jaxfeat import Features

SECTIONS = ("single", "batch", "ks", "scaling", "breakdown", "large_vocab")
# jaxfeat's float32 stall rule (jaxfeat.SolverSettings): every WINDOW steps, stop when the loss
# fell by at most FTOL * loss + ATOL since the previous check. The SciPy baseline uses the same
# rule.
SOLVER = jaxfeat.SolverSettings()
FTOL, ATOL, WINDOW = SOLVER.ftol32, SOLVER.atol32, SOLVER.window
MAX_STEPS = inspect.signature(jaxfeat.fit_batch).parameters["max_steps"].default  # 200
RESTARTS = 16
REF_FACTOR = 1.05
# An optimiser that never moves: fit_batch then returns its starting points. One object for the
# whole run, since the optimiser is a static argument of the compiled fit (a new one recompiles).
HOLD = optax.set_to_zero()
# Stall checks further apart than any step budget: every member takes its whole budget.
NO_STALL = dataclasses.replace(SOLVER, window=2**30)
# The large-vocabulary section's old paths. One object each for the whole run, like HOLD: the
# optimiser and the solver settings are static arguments of the compiled fit.
LBFGS = optax.lbfgs()
DENSE = dataclasses.replace(SOLVER, lm_max_params=10**9)  # dense Gauss-Newton at every size
# The targets for the large-vocabulary section.
LV_QUALITY_FACTOR = REF_FACTOR  # default fit within 1.05 x the long dense Gauss-Newton runs
LV_BOUND_FACTOR = 3.0  # fit within 3 x the certified bound at k = 6..12 (bound non-zero)
LV_BOUND_AT_K_FACTOR = 2.0  # fit within 2 x the certified bound at k = 8, large V
LV_MAX_SLOPE = 1.1  # warm time ~ V^slope


# ---------------------------------------------------------------------------------------------
# Measurement


class CompileClock:
    """Sums JAX's compile-duration events, so a first call splits into compile and run time."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if event in self.EVENTS:
            self.total += duration
            self.count += event.endswith("backend_compile_duration")


CLOCK: CompileClock | None = None


def _clock() -> CompileClock:
    global CLOCK
    if CLOCK is None:  # one listener per process, however often main() runs
        CLOCK = CompileClock()
    return CLOCK


def _release_memory() -> None:
    # Freed XLA buffers stay in glibc's arenas; returning them makes the next high-water mark
    # measure the call itself rather than the largest call so far.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def measure(
    fn: Callable[[], Any], *, warm: bool = True, max_repeat_s: float = 20.0, repeats: int = 3
) -> tuple[Any, dict]:
    """Times a first call and warm calls of ``fn``, with the memory growth of the first call.

    Memory on CPU is the growth of the process's resident-set high-water mark (Linux ``VmHWM``,
    reset through ``/proc/self/clear_refs`` before the call) over the resident set at its start;
    it includes the compiler's own memory. On accelerators, the allocator's ``peak_bytes_in_use``.
    """
    clock = _clock()
    _release_memory()
    base = _rss_kib("VmRSS")
    can_reset = _reset_peak()
    c0, n0 = clock.total, clock.count
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    compile_s = clock.total - c0
    rec: dict[str, Any] = {
        "first_s": first,
        "compile_s": compile_s,
        "xla_compilations": clock.count - n0,
    }
    if can_reset and base is not None:
        rec["rss_peak_first_call_bytes"] = 1024 * (_rss_kib("VmHWM") - base)
    run_est = max(first - compile_s, 0.0)
    if warm and run_est < max_repeat_s:
        times = []
        c1 = clock.total
        for _ in range(repeats if run_est < max_repeat_s / repeats else 1):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        rec.update(
            warm_s=float(np.median(times)),
            warm_repeats=len(times),
            warm_method="median of repeated calls",
        )
        if clock.total > c1:
            # A warm call that compiles again (e.g. a static argument that is a new object on
            # every call): its time is not a warm time.
            rec["warm_compile_s"] = (clock.total - c1) / len(times)
    else:
        rec.update(warm_s=run_est, warm_repeats=0, warm_method="first call minus compile time")
    dev = _device_peak()
    if dev is not None:
        rec["device_peak_bytes"] = dev
    return out, rec


_COMPILED: dict[tuple, tuple[Any, dict]] = {}


def compiled_fit(t, probs, k: int, **options: Any) -> tuple[Any, dict]:
    """The public :func:`jaxfeat.fit_batch` call compiled ahead of time as one XLA program.

    ``jax.jit`` over (t, probs) with ``k`` and ``options`` fixed, lowered and compiled: gives
    XLA's buffer sizes of the whole fit and its compile time, and an executable that runs the fit
    without the Python around the eager call. Cached by shapes and options (one compile each).
    Returns ``(executable(t, probs), info)``.
    """
    p = jnp.asarray(probs)
    tj = jnp.asarray(t, p.dtype)
    key = (tj.shape, p.shape, str(p.dtype), k, tuple(sorted(options.items())))
    if key not in _COMPILED:
        fn = jax.jit(lambda tt, pp: jaxfeat.fit_batch(tt, pp, k, **options))
        t0 = time.perf_counter()
        exe = fn.lower(tj, p).compile()
        info: dict[str, Any] = {"compile_s": time.perf_counter() - t0}
        stats = exe.memory_analysis()
        if stats is not None:
            parts = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
            info["xla_bytes"] = {q: int(getattr(stats, q)) for q in parts}
            info["xla_total_bytes"] = sum(info["xla_bytes"].values())
        _COMPILED[key] = (exe, info)
    return _COMPILED[key]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is not positive (e.g. a difference of noise)."""
    if a is None or b is None or not b > 0:
        return None
    return a / b


# ---------------------------------------------------------------------------------------------
# Workloads, starting points and the common loss


def mixed_batch(n: int, T: int = 256, V: int = 3, seed: int = 0):
    """n ``random_smooth`` targets, target i with bandwidth 1 + i % 4 (mixed complexity)."""
    keys = jax.random.split(jax.random.key(seed), n)
    tg = [jaxfeat.targets.random_smooth(keys[i], 1 + i % 4, V, n=T) for i in range(n)]
    return np.asarray(tg[0].t), np.stack([np.asarray(x.probs) for x in tg]), 1 + np.arange(n) % 4


def mean_kl64(params: Features, t, probs) -> np.ndarray:
    """Mean KL of ReLU-feature models in float64 NumPy; leading axes broadcast."""
    c, l, w, b = (np.asarray(x, np.float64) for x in params[:4])
    t = np.asarray(t, np.float64)
    p = np.asarray(probs, np.float64)
    a = np.maximum(t[:, None] * w[..., None, :] + b[..., None, :], 0.0)
    z = c[..., None, :] + a @ l
    z = z - z.max(axis=-1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    pos = p > 0
    logp = np.log(np.where(pos, p, 1.0))
    return np.where(pos, p * (logp - logq), 0.0).sum(axis=-1).mean(axis=-1)


def jaxfeat_start(t, probs, k: int, restarts: int, seed: int = 0) -> Features:
    """Starting points built by jaxfeat's own initialisation, as :class:`Features` (B, R, ...).

    Read off the public API: :func:`jaxfeat.fit_batch` with one restart per row and an optimiser
    that does not move (``optax.set_to_zero()``) returns its starting point. Restart 0 leaves the
    knots to jaxfeat, so it starts where jaxfeat's first restart does (up to float32 rounding: a
    linear term and knots at curvature quantiles); restarts 1.. get knots drawn uniformly on the
    grid (``init_knots``) and jaxfeat's least-squares (c, l) for them. jaxfeat's other restarts
    (direction patterns, jitter) are not reachable through the public API.
    """
    B = probs.shape[0]
    rng = np.random.default_rng(seed)
    knots = np.full((B, restarts, k), np.nan, np.float32)
    knots[:, 1:] = np.sort(rng.uniform(t[0], t[-1], (B, restarts - 1, k)), axis=-1)
    p = jnp.asarray(np.repeat(probs, restarts, axis=0))
    params = _start_fn(k)(jnp.asarray(t, p.dtype), p, jnp.asarray(knots.reshape(B * restarts, k)))
    return Features(*(np.asarray(x).reshape(B, restarts, *np.shape(x)[1:]) for x in params))


@functools.cache
def _start_fn(k: int):
    # Compiled as one program: the eager call would compile its small operations once more.
    return jax.jit(
        lambda t, p, knots: (
            jaxfeat.fit_batch(
                t, p, k, restarts=1, max_steps=1, optimizer=HOLD, init_knots=knots
            ).params
        )
    )


def random_init(t, n: int, restarts: int, k: int, V: int, seed: int = 0) -> Features:
    """Random (c, l, w, b): small logit vectors and knots uniform on the grid."""
    rng = np.random.default_rng(seed)
    t0, span = float(t[0]), float(t[-1] - t[0])
    w = rng.normal(size=(n, restarts, k)) / span
    b = -w * (t0 + span * rng.uniform(size=(n, restarts, k)))
    l = 0.1 * rng.normal(size=(n, restarts, k, V))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return Features.create(f32(np.zeros((n, restarts, V))), f32(l), f32(w), f32(b))


def _take(params: Features, idx) -> Features:
    return Features(*(np.asarray(x)[idx] for x in params))


def _stratified(bw: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n target indices drawn at random, n / 4 of each bandwidth (bandwidths 1.. first for the
    remainder when n is not a multiple of 4)."""
    counts = [n // 4 + (b <= n % 4) for b in range(1, 5)]
    return np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(bw == b), c, replace=False)
                for b, c in zip(range(1, 5), counts, strict=True)
                if c
            ]
        )
    )


def work_queue_lanes(n_members: int, T: int, V: int, k: int, itemsize: int) -> int:
    """The lanes (members stepped together) of jaxfeat's Gauss-Newton work queue, re-derived from
    :class:`jaxfeat.SolverSettings`' documentation: on CPU as many as keep the (lanes, T,
    (k + 1) V) intermediates within ``cpu_lane_bytes``, elsewhere ``accelerator_lanes``."""
    if jax.default_backend() != "cpu":
        return max(1, min(n_members, SOLVER.accelerator_lanes))
    return int(np.clip(SOLVER.cpu_lane_bytes // (T * (k + 1) * V * itemsize), 1, n_members))


# ---------------------------------------------------------------------------------------------
# Methods


def run_jaxfeat(
    t, probs, k: int, budgets, cfg: dict, fit_fn=None, default_repeat_s: float = 20.0
) -> dict:
    """jaxfeat at several step budgets; the default budget gets a warm call up to a time limit,
    and XLA's buffer sizes of the call compiled as one program."""
    R, default = cfg["restarts"], cfg["max_steps"]
    fit_fn = fit_fn or (lambda s: jaxfeat.fit_batch(t, probs, k, restarts=R, max_steps=s))
    rows = []
    for steps in budgets:
        res, rec = measure(
            lambda s=steps: fit_fn(s), warm=(steps == default), max_repeat_s=default_repeat_s
        )
        if steps == default:
            info = compiled_fit(t, probs, k, restarts=R, max_steps=steps)[1]
            rec["xla_total_bytes"] = info.get("xla_total_bytes")
        losses = mean_kl64(res.params, t, probs)
        rec.update(
            max_steps=steps,
            loss_per_target=losses.tolist(),
            loss=float(losses.mean()),
            converged_fraction=float(np.mean(np.asarray(res.restart_converged))),
            num_steps_best_mean=float(np.mean(np.asarray(res.num_steps))),
        )
        rows.append(rec)
        log(
            f"  jaxfeat max_steps={steps}: loss {rec['loss']:.4g} first {rec['first_s']:.2f}s "
            f"compile {rec['compile_s']:.2f}s warm {rec['warm_s']:.2f}s"
        )
    return {"budgets": rows, "default_max_steps": default}


@functools.cache
def _optax_solver():
    """``optax.lbfgs`` on (c, l, w, b), vmapped over targets and restarts.

    The step count is a traced loop bound, so one compilation serves every budget; each step is
    otherwise exactly optax's documented L-BFGS loop (value_and_grad_from_state, then update).
    """
    opt = optax.lbfgs()

    def solve(t, p, x0, steps):
        fn = lambda x: jaxfeat.mean_kl(x, t, p)
        vg = optax.value_and_grad_from_state(fn)

        def body(_, carry):
            x, s = carry
            v, g = vg(x, state=s)
            upd, s = opt.update(g, s, x, value=v, grad=g, value_fn=fn)
            return optax.apply_updates(x, upd), s

        x, _ = jax.lax.fori_loop(0, steps, body, (x0, opt.init(x0)))
        return x

    per_target = jax.vmap(solve, in_axes=(None, None, 0, None))
    return jax.jit(jax.vmap(per_target, in_axes=(None, 0, 0, None)))


def run_optax(t, probs, init: Features, budgets, max_repeat_s: float = 5.0) -> dict:
    """Naive optax L-BFGS at several fixed step counts; best-restart losses per target."""
    solver = _optax_solver()
    tj, pj = jnp.asarray(t, jnp.float32), jnp.asarray(probs, jnp.float32)
    rows = []
    for i, steps in enumerate(budgets):
        x, rec = measure(
            lambda s=steps: solver(tj, pj, init, s), max_repeat_s=max_repeat_s, repeats=2
        )
        if i == 0:
            rec["note"] = "this first call compiles the solver for every step budget"
        losses = mean_kl64(x, t, probs[:, None])
        losses = np.where(np.isfinite(losses), losses, np.inf).min(axis=1)
        rec.update(steps=steps, loss_per_target=losses.tolist(), loss=float(losses.mean()))
        rows.append(rec)
        log(
            f"  optax steps={steps} n={len(probs)}: loss {rec['loss']:.4g} "
            f"first {rec['first_s']:.2f}s warm {rec['warm_s']:.2f}s"
        )
    return {"budgets": rows}


def _flat(params: Features, i: int, r: int) -> np.ndarray:
    return np.concatenate([np.asarray(x[i, r], np.float64).ravel() for x in params[:4]])


def _stall_callback(traj: dict) -> Callable:
    """A SciPy callback that records the trajectory and applies jaxfeat's stall rule."""
    ref = {"loss": np.inf, "since": 0}

    # SciPy passes the OptimizeResult only to a callback whose one parameter has this name.
    def callback(intermediate_result):
        f = float(intermediate_result.fun)
        traj["loss"].append(f)
        traj["time"].append(time.perf_counter() - traj["start"])
        ref["since"] += 1
        if ref["since"] >= WINDOW:
            stalled = ref["loss"] - f <= FTOL * f + ATOL
            ref["loss"], ref["since"] = f, 0
            if stalled:
                raise StopIteration

    return callback


@functools.cache
def _scipy_value_and_grad(k: int, V: int):
    """Jitted float64 value and gradient of the mean KL in the flat (c, l, w, b) vector."""

    def loss(x, t, p):
        c, l = x[:V], x[V : V + k * V].reshape(k, V)
        w, b = x[V + k * V : V + k * V + k], x[V + k * V + k :]
        return jaxfeat.mean_kl(Features.create(c, l, w, b), t, p)

    return jax.jit(jax.value_and_grad(loss))


def _x64():
    """A float64 context: ``jax.enable_x64`` on JAX >= 0.8, ``jax.experimental`` before."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        return ctx(True)
    from jax.experimental import enable_x64

    return enable_x64()


def run_scipy(t, probs, init: Features, k: int, iter_grid, max_steps: int = MAX_STEPS) -> dict:
    """SciPy L-BFGS-B, one restart after another, with jaxfeat's stall rule and step cap.

    Records the loss and the wall-clock time after every iteration, so the loss reached within
    any iteration budget (and its time) can be read off one run.
    """
    V = probs.shape[-1]
    R = init.c.shape[1]
    with _x64():
        t64 = jnp.asarray(t, jnp.float64)
        vg_t = _scipy_value_and_grad(k, V)
        vg = lambda x, p: vg_t(x, t64, p)
        p0 = jnp.asarray(probs[0], jnp.float64)
        _, compile_rec = measure(lambda: vg(jnp.asarray(_flat(init, 0, 0)), p0), warm=False)
        per_target, fn_time, nfev = [], 0.0, 0
        start_all = time.perf_counter()
        for i in range(len(probs)):
            p = jnp.asarray(probs[i], jnp.float64)
            restarts = []
            for r in range(R):
                x0 = _flat(init, i, r)
                state = {"fn": 0.0, "n": 0}

                def fun(x, p=p, state=state):
                    s = time.perf_counter()
                    v, g = vg(x, p)
                    v, g = float(v), np.asarray(g)
                    state["fn"] += time.perf_counter() - s
                    state["n"] += 1
                    return v, g

                traj = {"loss": [], "time": [], "start": time.perf_counter()}
                f0, _ = fun(x0)
                res = minimize(
                    fun,
                    x0,
                    jac=True,
                    method="L-BFGS-B",
                    callback=_stall_callback(traj),
                    options={"maxiter": max_steps, "ftol": 0.0, "gtol": 0.0},
                )
                total = time.perf_counter() - traj["start"]
                fn_time += state["fn"]
                nfev += state["n"]
                restarts.append(
                    {
                        "loss0": f0,
                        "loss": traj["loss"],
                        "time": traj["time"],
                        "total": total,
                        "final": float(res.fun),
                        "nit": int(res.nit),
                    }
                )
            per_target.append(restarts)
        wall = time.perf_counter() - start_all
    # Loss and time within an iteration budget m, summed over the serial restarts.
    curve = []
    for m in iter_grid:
        losses, secs = [], 0.0
        for restarts in per_target:
            best = np.inf
            for rr in restarts:
                n = len(rr["loss"])
                if m == 0 or n == 0:
                    # No iteration yet (or none completed): the start point, at its cost so far.
                    best = min(best, rr["loss0"], rr["final"] if m > 0 else np.inf)
                    secs += rr["total"] if m > 0 else 0.0
                    continue
                j = min(m, n) - 1
                best = min(best, rr["loss"][j])
                secs += rr["total"] if m >= n else rr["time"][j]
            losses.append(best)
        curve.append(
            {
                "iterations": m,
                "time_s": secs,
                "loss_per_target": losses,
                "loss": float(np.mean(losses)),
            }
        )
    finals = [min(rr["final"] for rr in rs) for rs in per_target]
    nits = [rr["nit"] for rs in per_target for rr in rs]
    return {
        "compile_s": compile_rec["compile_s"],
        "warm_s": wall,
        "warm_method": "one serial pass (jitted function compiled beforehand)",
        "loss_per_target": finals,
        "loss": float(np.mean(finals)),
        "fraction_time_in_value_and_grad": fn_time / wall,
        "function_evaluations": nfev,
        "iterations_mean": float(np.mean(nits)),
        "stopped_by_stall_fraction": float(np.mean([n < max_steps for n in nits])),
        "curve": curve,
    }


# ---------------------------------------------------------------------------------------------
# Comparisons


def _curve(method: dict, kind: str) -> list[tuple[float, float]]:
    """(warm time, loss) points of a method's loss-versus-time curve."""
    if kind == "scipy":
        return [(c["time_s"], c["loss"]) for c in method["curve"]]
    return [(b["warm_s"], b["loss"]) for b in method["budgets"]]


def time_to(points, target_loss: float) -> float | None:
    ok = [tm for tm, loss in points if loss <= target_loss]
    return min(ok) if ok else None


def compare(methods: dict[str, tuple[dict, str]], scale: dict[str, float]) -> dict:
    """Reference loss, time to reach it, and jaxfeat's speed-up at matched (or lower) loss.

    ``scale`` multiplies a method's times (subset-to-full extrapolation). For each baseline, the
    speed-up is the baseline's time for its final loss over the time jaxfeat needs to reach a
    loss at least as low; it is a lower bound when jaxfeat's smallest budget already does.
    """
    pts = {
        m: [(tm * scale.get(m, 1.0), loss) for tm, loss in _curve(d, kind)]
        for m, (d, kind) in methods.items()
    }
    ref = REF_FACTOR * min(loss for p in pts.values() for _, loss in p)
    reach = {m: time_to(p, ref) for m, p in pts.items()}
    out: dict[str, Any] = {
        "reference_loss": ref,
        "reference_definition": f"{REF_FACTOR} x the lowest loss any method reached",
        "time_to_reference_s": reach,
    }
    jf = sorted(pts["jaxfeat"])
    ratios = {}
    for m, p in pts.items():
        if m == "jaxfeat":
            continue
        final_t, final_loss = max(p)
        t_j = time_to(jf, final_loss)
        ratios[m] = {
            "baseline_time_s": final_t,
            "baseline_loss": final_loss,
            "jaxfeat_time_to_baseline_loss_s": t_j,
            "speedup_at_matched_loss": None if t_j is None else final_t / t_j,
            "lower_bound": t_j is not None and t_j == jf[0][0] and jf[0][1] < final_loss,
            "speedup_to_reference": (
                None
                if reach[m] is None or reach["jaxfeat"] is None
                else reach[m] / reach["jaxfeat"]
            ),
        }
    out["jaxfeat_vs"] = ratios
    return out


def restrict(method: dict, kind: str, idx) -> dict:
    """The same method's results with losses averaged over a subset of targets only."""
    idx = np.asarray(idx)
    key = "curve" if kind == "scipy" else "budgets"
    rows = [
        dict(r, loss=float(np.mean(np.asarray(r["loss_per_target"])[idx]))) for r in method[key]
    ]
    return dict(method, **{key: rows})


# ---------------------------------------------------------------------------------------------
# Sections


def _sizes(cfg: dict) -> str:
    return f"k={cfg['k']}, {cfg['restarts']} restarts"


def section_single(cfg: dict) -> dict:
    tgt = jaxfeat.targets.oscillating(2, n=cfg["T"])
    t, probs = np.asarray(tgt.t), np.asarray(tgt.probs)[None]
    k, R, V = cfg["k"], cfg["restarts"], probs.shape[-1]
    log("single target: jaxfeat")
    jf = run_jaxfeat(
        t,
        probs,
        k,
        cfg["jaxfeat_budgets"],
        cfg,
        fit_fn=lambda s: jax.tree.map(
            lambda x: x[None], jaxfeat.fit(tgt, k, restarts=R, max_steps=s)
        ),
    )
    log("single target: optax")
    ox = run_optax(t, probs, random_init(t, 1, R, k, V), cfg["optax_budgets_single"])
    log("single target: scipy (jaxfeat's starting points)")
    sp = run_scipy(t, probs, jaxfeat_start(t, probs, k, R), k, cfg["scipy_iters"], cfg["max_steps"])
    log("single target: scipy (random init)")
    sp_rand = run_scipy(
        t, probs, random_init(t, 1, R, k, V), k, cfg["scipy_iters"], cfg["max_steps"]
    )
    methods = {
        "jaxfeat": (jf, "jaxfeat"),
        "optax_lbfgs": (ox, "optax"),
        "scipy_lbfgsb": (sp, "scipy"),
        "scipy_lbfgsb_random_init": (sp_rand, "scipy"),
    }
    jf["fits_per_minute_warm"] = 60 / jf["budgets"][-1]["warm_s"]
    return {
        "description": (
            f"jaxfeat.targets.oscillating(2) (T={cfg['T']}, V={V}), {_sizes(cfg)}; jaxfeat.fit"
        ),
        "methods": {m: d for m, (d, _) in methods.items()},
        "comparison": compare(methods, {}),
    }


def section_batch(cfg: dict) -> dict:
    n, k, R = cfg["batch_size"], cfg["k"], cfg["restarts"]
    t, probs, bw = mixed_batch(n, cfg["T"], cfg["V"])
    V = probs.shape[-1]
    log(f"batch of {n}: jaxfeat")
    jf = run_jaxfeat(
        t, probs, k, cfg["jaxfeat_budgets_batch"], cfg, default_repeat_s=cfg["batch_repeat_s"]
    )
    default = jf["budgets"][-1]
    jf["targets_per_minute_warm"] = 60 * n / default["warm_s"]
    rng = np.random.default_rng(0)
    sub = _stratified(bw, cfg["scipy_subset"], rng)
    log(f"batch: scipy on {len(sub)} targets")
    sp = run_scipy(
        t, probs[sub], jaxfeat_start(t, probs[sub], k, R), k, cfg["scipy_iters"], cfg["max_steps"]
    )
    sp.update(
        subset=sub.tolist(),
        extrapolated_warm_s=sp["warm_s"] * n / len(sub),
        extrapolation=f"serial: times x {n}/{len(sub)} (linear in the number of targets)",
        targets_per_minute_warm=60 * len(sub) / sp["warm_s"],
    )
    ox_runs = {}
    for m in cfg["optax_subsets"]:
        idx = _stratified(bw, m, rng)
        log(f"batch: optax on {m} targets")
        ox_runs[m] = run_optax(
            t,
            probs[idx],
            random_init(t, m, R, k, V, seed=1),
            cfg["optax_budgets_batch"],
            max_repeat_s=cfg["optax_repeat_s"],
        )
        ox_runs[m]["subset"] = idx.tolist()
    # vmapped time is affine in the batch size (a fixed per-step overhead plus per-member work):
    # fit it on the two subset sizes and evaluate it at the whole batch.
    m1, m2 = sorted(ox_runs)
    ox: dict[str, Any] = {"budgets": [], "subset_runs": {str(m): r for m, r in ox_runs.items()}}
    for b1, b2 in zip(ox_runs[m1]["budgets"], ox_runs[m2]["budgets"], strict=True):
        slope = max((b2["warm_s"] - b1["warm_s"]) / (m2 - m1), 0.0)
        intercept = b2["warm_s"] - slope * m2
        ox["budgets"].append(
            {
                "steps": b2["steps"],
                "warm_s": intercept + slope * n,
                "seconds_per_target": slope,
                "loss": b2["loss"],
                "loss_per_target": b2["loss_per_target"],
            }
        )
    ox["extrapolation"] = (
        f"warm time fitted as a + b * n on subsets n = {m1}, {m2} and evaluated "
        f"at n = {n}; losses are those of the n = {m2} subset. Under vmap the "
        "line search runs as long as its slowest member, which grows with n, "
        "so this favours the baseline."
    )
    ox["targets_per_minute_warm"] = 60 * n / ox["budgets"][-1]["warm_s"]
    cmp_scipy = compare(
        {"jaxfeat": (restrict(jf, "jaxfeat", sub), "jaxfeat"), "scipy_lbfgsb": (sp, "scipy")},
        {"scipy_lbfgsb": n / len(sub)},
    )
    cmp_optax = compare(
        {
            "jaxfeat": (restrict(jf, "jaxfeat", ox_runs[m2]["subset"]), "jaxfeat"),
            "optax_lbfgs": (ox, "optax"),
        },
        {},
    )
    return {
        "description": (
            f"{n} jaxfeat.targets.random_smooth targets (bandwidth 1 + i % 4, V={V}, "
            f"T={cfg['T']}), {_sizes(cfg)}; jaxfeat.fit_batch"
        ),
        "methods": {"jaxfeat": jf, "scipy_lbfgsb": sp, "optax_lbfgs": ox},
        "comparison": {
            "scipy_lbfgsb": cmp_scipy,
            "optax_lbfgs": cmp_optax,
            "note": (
                "each comparison averages losses over the targets its baseline ran "
                "on; all times are for the whole batch"
            ),
        },
    }


def section_ks(cfg: dict) -> dict:
    tgt = jaxfeat.targets.oscillating(2, n=cfg["T"])
    t, probs = np.asarray(tgt.t), np.asarray(tgt.probs)
    R, M, V = cfg["restarts"], cfg["max_steps"], probs.shape[-1]
    ks = list(range(cfg.get("ks_min", 1), cfg["ks_max"] + 1))
    log(f"k sweep {ks[0]}..{ks[-1]}: jaxfeat.fit_ks")
    res, rec = measure(lambda: jaxfeat.fit_ks(tgt, ks, restarts=R, max_steps=M))
    rec["loss_per_k"] = [float(mean_kl64(r.params, t, probs)) for r in res]
    jl = dict(zip(ks, rec["loss_per_k"], strict=True))
    sub = [k for k in cfg["ks_baseline"] if k <= ks[-1]]
    runs: dict[str, dict] = {"jaxfeat_fit_per_k": {}, "scipy_lbfgsb": {}, "optax_lbfgs": {}}
    log(f"k sweep: jaxfeat.fit, scipy and optax at k = {sub}")
    for k in sub:
        r, m = measure(lambda k=k: jaxfeat.fit(tgt, k, restarts=R, max_steps=M))
        runs["jaxfeat_fit_per_k"][k] = {
            "warm_s": m["warm_s"],
            "compile_s": m["compile_s"],
            "loss": float(mean_kl64(r.params, t, probs)),
        }
        s = run_scipy(t, probs[None], jaxfeat_start(t, probs[None], k, R), k, [M], M)
        runs["scipy_lbfgsb"][k] = {"warm_s": s["warm_s"], "loss": s["loss"]}
        o = run_optax(t, probs[None], random_init(t, 1, R, k, V), [cfg["optax_budgets_ks"]])[
            "budgets"
        ][0]
        runs["optax_lbfgs"][k] = {
            "warm_s": o["warm_s"],
            "compile_s": o["compile_s"],
            "loss": o["loss"],
            "steps": o["steps"],
        }

    def summary(d):
        # Serial per-k runs: the total over the swept k interpolates time linearly in k.
        total = float(np.sum(np.interp(ks, sub, [d[k]["warm_s"] for k in sub])))
        ok = [jl[k] <= d[k]["loss"] * REF_FACTOR for k in sub]
        return {
            "per_k": {str(k): v for k, v in d.items()},
            "total_warm_s_interpolated": total,
            "fit_ks_speedup_warm": total / rec["warm_s"],
            "fit_ks_loss_within_5pct_or_lower_fraction": float(np.mean(ok)),
        }

    return {
        "description": (
            f"jaxfeat.targets.oscillating(2), k = {ks[0]}..{ks[-1]}, {R} restarts; one "
            "fit_ks call against per-k serial runs"
        ),
        "ks": ks,
        "jaxfeat_fit_ks": rec,
        **{name: summary(d) for name, d in runs.items()},
        "note": (
            f"per-k runs measured at k = {sub}; their total over all k is interpolated "
            "linearly in k. fit_ks pads every k to k_max feature slots."
        ),
    }


def _loglog_slope(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _n_params(name: str, value: int, k: int = 8, V: int = 3) -> int:
    """Parameters per restart, (k + 1) V + k, at a point of a sweep (other sizes at k, V)."""
    k = value if name == "k" else k
    V = value if name == "V" else V
    return (k + 1) * V + k


def growth_laws(
    name: str, points: list[dict], k: int = 8, V: int = 3, lm_max_params: int = SOLVER.lm_max_params
) -> dict:
    """Log-log slopes of warm time and compiled-fit memory against the swept size.

    Fitted over all points, over the upper half (where fixed costs matter least), and, where the
    default optimiser changes along the sweep, separately for the dense Gauss-Newton points
    (``_gauss_newton``) and the matrix-free Gauss-Newton points above ``lm_max_params`` (``_cg``).
    """
    done = [p for p in points if "skipped" not in p]
    xs = np.array([p["value"] for p in done], float)
    times = np.array([p["warm_s"] for p in done], float)
    mem = np.array([p.get("xla_total_bytes") or np.nan for p in done], float)
    upper = slice(len(done) // 2, None)
    out = {
        "time_slope_all": _loglog_slope(xs, times),
        "time_slope_upper_half": _loglog_slope(xs[upper], times[upper]),
        "memory_slope_all": _loglog_slope(xs, mem),
        "memory_slope_upper_half": _loglog_slope(xs[upper], mem[upper]),
    }
    lm = np.array([_n_params(name, p["value"], k, V) <= lm_max_params for p in done], bool)
    if 0 < lm.sum() < len(done):
        out.update(
            time_slope_gauss_newton=_loglog_slope(xs[lm], times[lm]),
            memory_slope_gauss_newton=_loglog_slope(xs[lm], mem[lm]),
            time_slope_cg=_loglog_slope(xs[~lm], times[~lm]),
            memory_slope_cg=_loglog_slope(xs[~lm], mem[~lm]),
        )
    return out


def section_scaling(cfg: dict, batch: dict | None = None) -> dict:
    out: dict[str, Any] = {}
    cap = cfg["scaling_cap_s"]
    K, T0, V0, R, M = cfg["k"], cfg["T"], cfg["V"], cfg["restarts"], cfg["max_steps"]

    def sweep(name, values, make):
        points = []
        for v in values:
            # Sizes grow along a sweep: once a call is over the cap, larger ones are skipped.
            if any(p.get("first_s", 0.0) > cap for p in points):
                points.append({"value": v, "skipped": f"an earlier call took over {cap} s"})
                continue
            if name == "batch_size" and batch is not None and v == batch["size"]:
                points.append(dict(batch["point"], value=v, reused="batch section"))
                continue
            t, probs, k = make(v)
            res, rec = measure(
                lambda t=t, probs=probs, k=k: jaxfeat.fit_batch(
                    t, probs, k, restarts=R, max_steps=M
                ),
                max_repeat_s=cap / 3,
            )
            info = compiled_fit(t, probs, k, restarts=R, max_steps=M)[1]
            rec.update(
                value=v,
                targets=len(probs),
                seconds_per_target=rec["warm_s"] / len(probs),
                loss=float(np.mean(mean_kl64(res.params, t, probs))),
                xla_bytes=info.get("xla_bytes"),
                xla_total_bytes=info.get("xla_total_bytes"),
                xla_compile_s=info["compile_s"],
            )
            points.append(rec)
            log(
                f"  scaling {name}={v}: warm {rec['warm_s']:.3f}s first {rec['first_s']:.2f}s "
                f"xla buffers {(rec['xla_total_bytes'] or 0) / 2**20:.1f} MiB"
            )
        out[name] = {"points": points, **growth_laws(name, points, K, V0)}

    def batch_of(b):
        t, probs, _ = mixed_batch(b, T0, V0)
        return t, probs, K

    def one(k=K, T=T0, V=V0):
        tg = jaxfeat.targets.random_smooth(0, 4, V, n=T)
        return np.asarray(tg.t), np.asarray(tg.probs)[None], k

    grids = cfg["scaling"]
    log("scaling: batch size")
    sweep("batch_size", grids["batch_size"], batch_of)
    log("scaling: k")
    sweep("k", grids["k"], lambda k: one(k=k))
    log("scaling: T")
    sweep("T", grids["T"], lambda T: one(T=T))
    log("scaling: V")
    sweep("V", grids["V"], lambda V: one(V=V))
    out["lm_max_params"] = SOLVER.lm_max_params
    out["defaults"] = {"k": K, "T": T0, "V": V0, "restarts": R, "max_steps": M}
    out["notes"] = (
        f"Warm time of one fit_batch call with {R} restarts per target and max_steps={M} "
        f"(k = {K}, T = {T0}, V = {V0}, one random_smooth bandwidth-4 target; the batch-size "
        "sweep uses the mixed batch). Slopes are least-squares fits of log time (or log memory) "
        "against log size: the growth law is time ~ size^slope. Memory is XLA's buffer total "
        "(temporaries + arguments + outputs) of the same public call compiled as one program, "
        "jax.jit(fit_batch).lower(t, probs).compile().memory_analysis(). The default optimiser "
        "switches from dense Gauss-Newton (assembled matrix, Cholesky) to matrix-free "
        "Gauss-Newton (preconditioned conjugate gradients on J^T F J) above "
        f"{SOLVER.lm_max_params} parameters ((k + 1) V + k), so the k and V sweeps cross a change "
        "of regime (slopes _gauss_newton and _cg on either side); warm_compile_s on a "
        "point means its warm calls compiled again. Points after one whose first call took "
        f"longer than {cap} s are skipped."
    )
    return out


def section_breakdown(cfg: dict) -> dict:
    """Cost of one Gauss-Newton step inside the fit, per member, against its parts.

    The step's cost comes from the public call alone: with the stall check switched off
    (``SolverSettings(window=2**30)``) every member takes exactly ``2 convex_steps + max(M - 2
    convex_steps, 2)`` steps for a budget M, so two budgets give the marginal cost of a
    (joint-phase, knots-free) step with the work queue's bookkeeping, and the intercept the fixed
    cost (initialisation, selection, dispatch). The parts (loss, gradient, Cholesky) run on as
    many members as the queue's lanes, through public functions, so their cost per member is
    comparable.
    """
    n, k, R, M = cfg["breakdown_size"], cfg["k"], cfg["restarts"], cfg["max_steps"]
    t, probs, _ = mixed_batch(n, cfg["T"], cfg["V"])
    p = jnp.asarray(probs)
    tj = jnp.asarray(t, p.dtype)
    T, V = probs.shape[1:]
    members = n * R
    lanes = work_queue_lanes(members, T, V, k, p.dtype.itemsize)
    waves = math.ceil(members / lanes)
    P = (k + 1) * V + k
    c = SOLVER.convex_steps
    steps_for = lambda budget: 2 * c + max(budget - 2 * c, 2)

    def fixed_fit(budget, solver):
        # Compiled as one program: no Python overhead in the differences of these times.
        exe = compiled_fit(t, probs, k, restarts=R, max_steps=budget, solver=solver)[0]
        return measure(lambda: exe(tj, p), repeats=5)[1]["warm_s"]

    m1, m2 = cfg["breakdown_budgets"]
    s1, s2 = steps_for(m1), steps_for(m2)
    t1, t2 = fixed_fit(m1, NO_STALL), fixed_fit(m2, NO_STALL)
    # Every member takes the same steps, so the lanes run ceil(members / lanes) waves: the loop
    # iterates waves x steps times, each iteration stepping every lane.
    loop_step = (t2 - t1) / (waves * (s2 - s1))
    per_lane_step = loop_step / lanes
    per_member_step = (t2 - t1) / (members * (s2 - s1))

    # The parts, on `lanes` members, through public functions.
    prm = jax.tree.map(lambda x: x[0], random_init(t, 1, lanes, k, V))
    pm = jnp.repeat(p, R, axis=0)[:lanes]
    loss = jax.jit(jax.vmap(lambda x, pp: jaxfeat.mean_kl(x, tj, pp)))
    vg = jax.jit(jax.vmap(jax.value_and_grad(lambda x, pp: jaxfeat.mean_kl(x, tj, pp))))
    A = jax.random.normal(jax.random.key(1), (lanes, P, P))
    H = A @ jnp.swapaxes(A, -1, -2) + P * jnp.eye(P)
    g = jnp.ones((lanes, P))
    solve = jax.jit(
        lambda H, g: jax.scipy.linalg.cho_solve(
            jax.scipy.linalg.cho_factor(H, lower=True), g[..., None]
        )[..., 0]
    )
    rows: dict[str, float] = {"lm_step_in_fit": per_lane_step}
    for name, fn in [
        ("loss", lambda: loss(prm, pm)),
        ("value_and_grad", lambda: vg(prm, pm)),
        ("cholesky_factor_and_solve", lambda: solve(H, g)),
    ]:
        rows[name] = measure(fn, repeats=7)[1]["warm_s"] / lanes
    # One optax L-BFGS step (with its zoom line search), per member, for comparison.
    init = random_init(t, n, R, k, V)
    solver = _optax_solver()
    one_step = measure(lambda: solver(tj, p, init, 1), repeats=3)[1]["warm_s"]
    more = measure(lambda: solver(tj, p, init, 11), repeats=1)[1]["warm_s"]
    rows["optax_lbfgs_step"] = (more - one_step) / 10 / members
    # The whole public call with its defaults, eager and compiled as one program.
    _, fit = measure(lambda: jaxfeat.fit_batch(t, probs, k, restarts=R, max_steps=M), repeats=1)
    exe, info = compiled_fit(t, probs, k, restarts=R, max_steps=M)
    jit_warm = measure(lambda: exe(tj, p), repeats=3)[1]["warm_s"]
    fixed_cost = t2 - per_member_step * members * s2
    fixed_at_default = fixed_cost + per_member_step * members * steps_for(M)
    step = per_lane_step if per_lane_step > 0 else None
    model = 2 * rows["loss"]  # a step evaluates the model once for q and once for the trial loss
    assembly = None if step is None else max(step - model - rows["cholesky_factor_and_solve"], 0)
    return {
        "description": (
            f"{n} mixed targets x {R} restarts = {members} members, k={k}, V={V}, "
            f"T={T}, P = {P} parameters per member; parts timed on {lanes} members "
            "(the work queue's lanes) and given per member"
        ),
        "k": k,
        "V": V,
        "T": T,
        "restarts": R,
        "lanes": lanes,
        "lanes_method": (
            "re-derived from SolverSettings.cpu_lane_bytes (CPU) or "
            "accelerator_lanes, as documented there"
        ),
        "seconds_per_member": rows,
        "fixed_step_fits": {
            "solver": "SolverSettings(window=2**30): no stall checks, all members take the budget",
            "budgets": [m1, m2],
            "steps_per_member": [s1, s2],
            "warm_s": [t1, t2],
            "waves_of_lanes": waves,
        },
        "fit_seconds_per_loop_iteration": loop_step,
        "fit_seconds_per_member_step": per_member_step,
        "fit_fixed_cost_s": fixed_cost,
        "fit_batch": {k2: fit[k2] for k2 in ("first_s", "compile_s", "warm_s", "xla_compilations")},
        "fit_batch_jit_compile_s": info["compile_s"],
        "fit_batch_jit_warm_s": jit_warm,
        "xla_total_bytes": info.get("xla_total_bytes"),
        "default_fit_over_fixed_step_fit": _ratio(jit_warm, fixed_at_default),
        "max_steps": M,
        "lm_step_fractions": {
            "model_evaluation": _ratio(model, step),
            "gradient_ggn_assembly_and_queue": _ratio(assembly, step),
            "cholesky_factor_and_solve": _ratio(rows["cholesky_factor_and_solve"], step),
        },
        "ggn_assembly_over_value_and_grad": _ratio(assembly, rows["value_and_grad"]),
        "optax_step_over_value_and_grad": _ratio(rows["optax_lbfgs_step"], rows["value_and_grad"]),
        "method": (
            "lm_step_in_fit is the marginal cost of a joint-phase step inside the public fit "
            "(two fixed step budgets, stall checks off), per lane: the Gauss-Newton step plus the "
            "work queue's per-step bookkeeping. loss and value_and_grad are jaxfeat.mean_kl on "
            "(c, l, w, b) and its gradient; model evaluation is two loss evaluations (a step "
            "computes q, then the trial loss); the Cholesky part is a "
            "factor-and-solve of the same size on random SPD matrices; gradient, GGN assembly and "
            "queue bookkeeping are the remainder of the step. fit_fixed_cost_s is the intercept "
            "(initialisation, selection, dispatch); default_fit_over_fixed_step_fit is the "
            "default fit's time over that of a fit whose members all take the whole budget (both "
            "compiled as one program)."
        ),
    }


def _lv_params(V: int, k: int) -> tuple[int, str]:
    """Parameters per restart, (k + 1) V + k, and the path the default fit takes for them."""
    n = _n_params("V", V, k=k)
    return n, "dense" if n <= SOLVER.lm_max_params else "cg"


def _dense_options(V: int, k: int) -> dict:
    """Options that make the fit dense Gauss-Newton: none where the default already is (the same
    program, so no second compile), else ``solver=DENSE`` (``lm_max_params=10**9``)."""
    return {} if _lv_params(V, k)[1] == "dense" else {"solver": DENSE}


def _skip_reason(done, cap: float, field: str = "first_s") -> str | None:
    """Why a point is skipped: an earlier one (sizes grow) took over ``cap`` seconds."""
    slow = [p for p in done if p and "skipped" not in p and p.get(field, 0.0) > cap]
    return f"an earlier call took over {cap} s" if slow else None


def _bound_skip_reason(done, V: int, caps: dict) -> str | None:
    """Why a bound at V is skipped: an earlier one took over ``caps["bound"]`` seconds, or the
    largest one so far, scaled linearly in V (the default bound's documented growth), predicts
    more than ``caps["bound_predicted"]``."""
    why = _skip_reason(done, caps["bound"], "seconds")
    ran = [p for p in done if "skipped" not in p and "seconds" in p]
    if why or not ran:
        return why
    last = max(ran, key=lambda p: p["V"])
    estimate = last["seconds"] * V / last["V"]
    if estimate > caps["bound_predicted"]:
        return (
            f"predicted {estimate:.0f} s (V={last['V']}'s {last['seconds']:.0f} s, linear in V), "
            f"over {caps['bound_predicted']} s"
        )
    return None


def _lv_fit(tgt, k: int, lv: dict, *, warm: bool = True, memory: bool = True, **options) -> dict:
    """One :func:`jaxfeat.fit` call, timed (first and warm calls), its loss re-evaluated in float64,
    and XLA's buffer sizes of the same call compiled as one program."""
    t, probs = np.asarray(tgt.t), np.asarray(tgt.probs)
    R, M = options.pop("restarts", lv["restarts"]), options.pop("max_steps", lv["max_steps"])
    res, rec = measure(
        lambda: jaxfeat.fit(tgt, k, restarts=R, max_steps=M, **options),
        warm=warm,
        max_repeat_s=lv["repeat_s"],
    )
    rec.update(
        restarts=R,
        max_steps=M,
        mean_kl=float(res.mean_kl),
        mean_kl64=float(mean_kl64(res.params, t, probs)),
        converged=bool(res.converged),
        num_steps=int(res.num_steps),
        restarts_converged_fraction=float(np.mean(np.asarray(res.restart_converged))),
        seconds_per_target=rec["warm_s"],
    )
    top = lv["xla_memory_max_V"]
    if memory and (top is None or tgt.vocab <= top):
        info = compiled_fit(t, probs[None], k, restarts=R, max_steps=M, **options)[1]
        rec.update(
            xla_bytes=info.get("xla_bytes"),
            xla_total_bytes=info.get("xla_total_bytes"),
            xla_compile_s=info["compile_s"],
        )
    return rec


def _lv_quality(lv: dict, target) -> tuple[dict, dict]:
    """Default fits over the vocabulary list, and the growth law of their warm time in V."""
    k, cap = lv["k"], lv["cap_s"]["quality"]
    quality: dict[str, dict] = {}
    for V in lv["quality_V"]:
        P, path = _lv_params(V, k)
        head = {"V": V, "n_params": P, "path": path}
        why = _skip_reason(quality.values(), cap)
        if why:
            quality[str(V)] = {**head, "skipped": why}
            continue
        rec = {**head, **_lv_fit(target(V), k, lv)}
        quality[str(V)] = rec
        log(
            f"  large_vocab V={V} ({path}): mean KL {rec['mean_kl64']:.4g} steps "
            f"{rec['num_steps']} first {rec['first_s']:.2f}s warm {rec['warm_s']:.3f}s"
            + (
                f" xla buffers {rec['xla_total_bytes'] / 2**20:.1f} MiB"
                if "xla_bytes" in rec
                else ""
            )
        )
    return quality, large_vocab_growth(quality)


def large_vocab_growth(quality: dict) -> dict:
    """Growth laws in V of the default fits (points keyed by str(V), skipped ones left out)."""
    done = [q for q in quality.values() if "skipped" not in q]
    cg = [q for q in done if q["path"] == "cg"]
    dense = [q for q in done if q["path"] == "dense"]
    slope = lambda pts, f: _loglog_slope([q["V"] for q in pts], [q.get(f) or np.nan for q in pts])
    return {
        "time_slope_all": slope(done, "seconds_per_target"),
        "time_slope_cg": slope(cg, "seconds_per_target"),
        "time_slope_dense": slope(dense, "seconds_per_target"),
        "memory_slope_all": slope(done, "xla_total_bytes"),
        "memory_slope_cg": slope(cg, "xla_total_bytes"),
        "V_all": [q["V"] for q in done],
        "V_cg": [q["V"] for q in cg],
        "required_max_time_slope": LV_MAX_SLOPE,
        "method": (
            "least-squares slope of log(warm seconds per target) (or log XLA buffer bytes) "
            "against log V over the default fits; _cg / _dense: only the points on that path"
        ),
    }


def _lv_old_paths(lv: dict, target, quality: dict) -> dict:
    """optax L-BFGS (the old large-problem default) and forced dense Gauss-Newton, same restarts,
    key and step budget as the default fits, with their ratios to the default fit at that V."""
    k, cap = lv["k"], lv["cap_s"]["old_paths"]
    out: dict[str, Any] = {}
    for name, Vs, options in (
        ("lbfgs", lv["lbfgs_V"], lambda V: {"optimizer": LBFGS}),
        ("dense", lv["dense_V"], lambda V: _dense_options(V, k)),
    ):
        points: dict[str, dict] = {}
        for V in Vs:
            P, path = _lv_params(V, k)
            head = {"V": V, "n_params": P, "default_path": path}
            if name == "dense":
                forced = "SolverSettings(lm_max_params=10**9)"
                same = "defaults (already dense at this size: the same program)"
                head["solver"] = forced if options(V) else same
            why = _skip_reason(points.values(), cap)
            if why:
                points[str(V)] = {**head, "skipped": why}
                continue
            rec = {**head, **_lv_fit(target(V), k, lv, **options(V))}
            default = quality.get(str(V), {})
            rec[f"default_over_{name}_mean_kl"] = _ratio(default.get("mean_kl64"), rec["mean_kl64"])
            rec[f"{name}_over_default_warm_s"] = _ratio(rec["warm_s"], default.get("warm_s"))
            points[str(V)] = rec
            log(
                f"  large_vocab {name} V={V}: mean KL {rec['mean_kl64']:.4g} "
                f"first {rec['first_s']:.2f}s warm {rec['warm_s']:.3f}s"
            )
        out[name] = points
    out["note"] = (
        "lbfgs: optimizer=optax.lbfgs() (the default above lm_max_params before the matrix-free "
        "path); dense: solver=SolverSettings(lm_max_params=10**9). default_over_X_mean_kl < 1: "
        "the default fit is better; X_over_default_warm_s > 1: the default fit is faster."
    )
    return out


def _lv_reference(lv: dict, target, quality: dict, old: dict) -> dict:
    """Long dense Gauss-Newton runs at one V, the reference for the default fit's quality."""
    k, R, V = lv["k"], lv["restarts"], lv["reference_V"]
    out: dict[str, Any] = {"V": V, "max_steps": lv["reference_max_steps"], "runs": {}}
    if V is None:
        return {**out, "skipped": "not run in this mode"}
    cap = lv["cap_s"]["reference"]
    options = _dense_options(V, k)
    out["solver"] = "SolverSettings(lm_max_params=10**9)" if options else "defaults (dense)"
    earlier = [old.get("dense", {}).get(str(V), {})]
    for restarts, key in lv["reference_runs"]:
        name = f"restarts_{restarts}_key_{key}"
        why = _skip_reason(earlier, cap)
        if why:
            out["runs"][name] = {"restarts": restarts, "key": key, "skipped": why}
            continue
        rec = _lv_fit(
            target(V),
            k,
            lv,
            warm=False,
            memory=False,
            restarts=restarts,
            max_steps=lv["reference_max_steps"],
            key=key,
            **options,
        )
        rec["key"] = key
        out["runs"][name] = rec
        earlier.append(rec)
        log(
            f"  large_vocab long dense V={V} {name}: mean KL {rec['mean_kl64']:.4g} "
            f"first {rec['first_s']:.2f}s"
        )
    done = [r for r in out["runs"].values() if "skipped" not in r]
    same = [r for r in done if r["restarts"] == R and r["key"] == 0]
    default = quality.get(str(V), {}).get("mean_kl64")
    best = min((r["mean_kl64"] for r in done), default=None)
    ratio = _ratio(default, best)
    out.update(
        default_mean_kl=default,
        best_long_dense_mean_kl=best,
        default_over_long_dense_same_restarts=_ratio(default, same[0]["mean_kl64"])
        if same
        else None,
        default_over_best_long_dense=ratio,
        required_max_ratio=LV_QUALITY_FACTOR,
        met=bool(ratio is not None and ratio <= LV_QUALITY_FACTOR),
    )
    return out


def _bucket_info(tgt) -> dict:
    """The token buckets the default bound uses for this target (as its documentation gives
    them), and the probability mass they keep."""
    V, bounds = tgt.vocab, jaxfeat.bounds
    if V > bounds.AUTO_BUCKET_VOCAB:
        # AUTO_BUCKET_TOKENS: a cap on the tokens kept, in versions that have one.
        top = getattr(bounds, "AUTO_BUCKET_TOKENS", None)
        b = bounds.token_buckets(tgt, bounds.AUTO_BUCKET_SIZE, top)
    else:
        b = [np.arange(V)]
    kept = np.concatenate(b)
    return {
        "buckets": len(b),
        "bucket_sizes": sorted({int(x.size) for x in b}),
        "tokens_kept": int(kept.size),
        "kept_mass_mean": float(np.asarray(tgt.probs, np.float64)[:, kept].sum(axis=1).mean()),
    }


def _lv_bounds(lv: dict, target, quality: dict) -> tuple[dict, dict]:
    """The certified bound (default buckets) at k in bound_ks, against fit_ks at those k; and the
    bound at one k against the default fit there, at larger vocabularies."""
    ks, R, M, caps = lv["bound_ks"], lv["restarts"], lv["max_steps"], lv["cap_s"]
    bound: dict[str, dict] = {}
    for V in lv["bound_V"]:
        why = _bound_skip_reason(list(bound.values()), V, caps)
        if why:
            bound[str(V)] = {"V": V, "skipped": why}
            continue
        tgt = target(V)
        t, probs = np.asarray(tgt.t), np.asarray(tgt.probs)
        sb = jaxfeat.segmentation_lower_bound(tgt, max(ks))
        res, fit_rec = measure(
            lambda tgt=tgt: jaxfeat.fit_ks(tgt, ks, restarts=R, max_steps=M), warm=False
        )
        per_k = {}
        for k, r in zip(ks, res, strict=True):
            fit = float(mean_kl64(r.params, t, probs))
            b = float(sb.bounds[k - 1])
            per_k[str(k)] = {"bound": b, "fit_mean_kl": fit, "fit_over_bound": _ratio(fit, b)}
        ratios = [v["fit_over_bound"] for v in per_k.values()]
        worst = None if None in ratios else max(ratios)
        bound[str(V)] = {
            "V": V,
            "seconds": sb.seconds,
            "solver_tol": sb.solver_tol,
            **_bucket_info(tgt),
            "per_k": per_k,
            "fit_ks": {
                q: fit_rec[q]
                for q in ("first_s", "compile_s", "warm_s", "warm_method")
                if q in fit_rec
            },
            "all_nonzero": bool(all(v["bound"] > 0 for v in per_k.values())),
            "max_fit_over_bound": worst,
            "within_factor": bool(worst is not None and worst <= LV_BOUND_FACTOR),
        }
        log(
            f"  large_vocab bound V={V}: {sb.seconds:.1f}s, fit / bound "
            + ", ".join(
                f"k={k} {v['fit_over_bound'] or float('nan'):.3g}" for k, v in per_k.items()
            )
        )
    kq = lv["bound_k"]
    points: dict[str, dict] = {}
    for V in lv["bound_k_V"]:
        fit = quality.get(str(V), {}).get("mean_kl64")
        head = {"V": V}
        if fit is None:
            points[str(V)] = {**head, "skipped": "no default fit at this V"}
            continue
        have = bound.get(str(V), {})
        if "per_k" in have and str(kq) in have["per_k"]:
            b, secs = have["per_k"][str(kq)]["bound"], have["seconds"]
            head["bound_from"] = "the bound section's computation at this V"
        else:
            why = _bound_skip_reason([*bound.values(), *points.values()], V, caps)
            if why:
                points[str(V)] = {**head, "skipped": why}
                continue
            sb = jaxfeat.segmentation_lower_bound(target(V), kq)
            b, secs = float(sb.bounds[kq - 1]), sb.seconds
            head.update(_bucket_info(target(V)))
        points[str(V)] = {
            **head,
            "seconds": secs,
            "bound": b,
            "fit_mean_kl": fit,
            "fit_over_bound": _ratio(fit, b),
        }
        log(f"  large_vocab bound at k={kq} V={V}: fit / bound {_ratio(fit, b)}")
    return bound, {
        "k": kq,
        "fit": "the default fit of the quality sweep (k, restarts as there)",
        "required_max_fit_over_bound": LV_BOUND_AT_K_FACTOR,
        "points": points,
    }


def _lv_tightness(lv: dict) -> dict:
    """Round-robin token buckets against the exact one-bucket bound, where that is affordable."""
    T, ks, cap = lv["tightness_T"], lv["tightness_ks"], lv["cap_s"]["tightness"]
    out: dict[str, dict] = {}
    for V in lv["tightness_V"]:
        why = _skip_reason(out.values(), cap, "exact_seconds")
        if why:
            out[str(V)] = {"V": V, "skipped": why}
            continue
        tgt = jaxfeat.targets.random_smooth(0, lv["bandwidth"], V, n=T)
        bound = lambda b, tgt=tgt: jaxfeat.segmentation_lower_bound(
            tgt, max(ks), buckets=b, subgrid=T
        )
        exact = bound([np.arange(V)])
        rec: dict[str, Any] = {
            "V": V,
            "exact_seconds": exact.seconds,
            "exact": {str(k): float(exact.bounds[k - 1]) for k in ks},
            "bucketed": {},
            "bucketed_over_exact": {},
        }
        for size in lv["tightness_sizes"]:
            if size >= V:
                continue
            sb = bound(jaxfeat.bounds.token_buckets(tgt, size))
            rec["bucketed"][str(size)] = {
                "seconds": sb.seconds,
                "bounds": {str(k): float(sb.bounds[k - 1]) for k in ks},
            }
            rec["bucketed_over_exact"][str(size)] = {
                str(k): _ratio(float(sb.bounds[k - 1]), float(exact.bounds[k - 1])) for k in ks
            }
        # The layout of the buckets: token_buckets deals the tokens (sorted by mean probability)
        # round-robin; against consecutive chunks of that order and a random partition.
        size = lv["tightness_layout_size"]
        if size < V:
            order = np.argsort(-np.asarray(tgt.probs, np.float64).mean(axis=0), kind="stable")
            perm = np.random.default_rng(0).permutation(V)
            layouts = {
                "round_robin": jaxfeat.bounds.token_buckets(tgt, size),
                "consecutive": [order[i : i + size] for i in range(0, V, size)],
                "random": [perm[i : i + size] for i in range(0, V, size)],
            }
            rec["layout_size"] = size
            rec["layout_over_exact"] = {}
            for name, b in layouts.items():
                sb = bound(b)
                rec["layout_over_exact"][name] = {
                    str(k): _ratio(float(sb.bounds[k - 1]), float(exact.bounds[k - 1])) for k in ks
                }
        out[str(V)] = rec
        log(f"  large_vocab bucket tightness V={V}: {rec['bucketed_over_exact']}")
    return out


def section_large_vocab(cfg: dict) -> dict:
    """The default fit at large vocabularies (dense, then matrix-free Gauss-Newton), against the
    old paths, long dense runs and the certified segmentation bound."""
    lv = cfg["large_vocab"]
    k, R, M, T, bw = lv["k"], lv["restarts"], lv["max_steps"], lv["T"], lv["bandwidth"]
    target = functools.cache(lambda V: jaxfeat.targets.random_smooth(0, bw, V, n=T))
    log("large_vocab: default fits")
    quality, growth = _lv_quality(lv, target)
    log("large_vocab: old paths (optax L-BFGS, forced dense Gauss-Newton)")
    old = _lv_old_paths(lv, target, quality)
    log("large_vocab: long dense Gauss-Newton runs")
    reference = _lv_reference(lv, target, quality, old)
    log("large_vocab: certified bounds")
    bound, bound_at_k = _lv_bounds(lv, target, quality)
    log("large_vocab: bucket tightness")
    tightness = _lv_tightness(lv)
    target.cache_clear()
    return {
        "description": (
            f"jaxfeat.targets.random_smooth(0, {bw}, V) (T={T}), k={k}, {R} restarts, "
            f"max_steps={M}; jaxfeat.fit with defaults over V, the old paths, long dense runs "
            "and jaxfeat.segmentation_lower_bound"
        ),
        "k": k,
        "restarts": R,
        "max_steps": M,
        "T": T,
        "bandwidth": bw,
        "lm_max_params": SOLVER.lm_max_params,
        "path_rule": (
            "dense Gauss-Newton where (k + 1) V + k <= SolverSettings.lm_max_params, else "
            "matrix-free Gauss-Newton (cg)"
        ),
        "quality": quality,
        "growth": growth,
        "old_paths": old,
        "reference": reference,
        "bound_ks": lv["bound_ks"],
        "bound": bound,
        "bound_at_k": bound_at_k,
        "bucket_tightness": tightness,
        "notes": (
            "mean_kl is the FitResult's (float32), mean_kl64 the same parameters re-evaluated in "
            "float64; ratios use mean_kl64. Warm time per target is that of one jaxfeat.fit call "
            "(warm_method says how it was measured); xla_total_bytes is XLA's buffer total of the "
            "same call compiled as one program. bound: segmentation_lower_bound with its default "
            "token buckets and sub-grids (buckets, tokens_kept, kept_mass_mean: the buckets its "
            "documentation gives); fit_over_bound >= 1 always. "
            "bucket_tightness: bounds with token_buckets(target, size) over the exact one-bucket "
            "bound (buckets=[arange(V)]), both on the full grid. Points after one that took "
            "longer than the cap_s of its group are skipped."
        ),
    }


# ---------------------------------------------------------------------------------------------
# Driver


def environment(label: str | None) -> dict:
    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "optax": optax.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "jaxfeat": jaxfeat.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "device_label": label,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def config(mode: str) -> dict:
    """Sizes of a run: ``full``, ``quick`` (a few minutes) or ``smoke`` (tiny, to check the code:
    every call of one shape shares one compiled fit, so compilation is what it costs)."""
    sizes = {"k": 8, "T": 256, "V": 3, "restarts": RESTARTS, "max_steps": MAX_STEPS}
    large_vocab = {
        "k": 8,
        "restarts": 8,
        "max_steps": MAX_STEPS,
        "T": 256,
        "bandwidth": 3,
        "quality_V": [30, 100, 300, 1000, 3000, 10000],
        "lbfgs_V": [100, 300],
        "dense_V": [100],
        "reference_V": 100,
        "reference_max_steps": 800,
        "reference_runs": [[8, 0], [32, 1]],  # [restarts, key]
        "bound_V": [300, 1000],
        "bound_ks": list(range(6, 13)),
        "bound_k": 8,
        "bound_k_V": [1000, 10000],
        "tightness_V": [8, 16, 30, 64],
        "tightness_T": 64,
        "tightness_sizes": [4, 8, 16, 32],
        "tightness_layout_size": 8,
        "tightness_ks": [4, 6, 8],
        "repeat_s": 20.0,
        # Seconds: within each group, points after one whose call took longer are skipped.
        "cap_s": {
            "quality": 300.0,
            "old_paths": 90.0,
            "reference": 90.0,
            "bound": 400.0,
            "bound_predicted": 600.0,
            "tightness": 60.0,
        },
        # XLA buffer sizes (one more compile per call) up to this V; None: at every V.
        "xla_memory_max_V": None,
    }
    if mode == "smoke":
        return {
            "k": 2,
            "T": 32,
            "V": 3,
            "restarts": 2,
            "max_steps": 10,
            "jaxfeat_budgets": [10],
            "jaxfeat_budgets_batch": [10],
            "optax_budgets_single": [2, 5],
            "optax_budgets_batch": [2, 5],
            "optax_budgets_ks": 5,
            "scipy_iters": [0, 5, 10],
            "batch_size": 4,
            "batch_repeat_s": 2.0,
            "scipy_subset": 1,
            "optax_subsets": [1, 4],
            "optax_repeat_s": 1.0,
            "ks_min": 2,
            "ks_max": 2,
            "ks_baseline": [2],
            "scaling": {"batch_size": [1, 4], "k": [2], "T": [32], "V": [3]},
            "scaling_cap_s": 60.0,
            "breakdown_size": 4,
            "breakdown_budgets": [26, 60],
            # The other sections' fit (k, T, restarts, max_steps) at V = 3, whose compiled
            # programs (eager and as one program) the dense, reference and V = 3 calls reuse; one
            # new fit program, at V = 200 (the cg path). optax L-BFGS (one more program, the same
            # code as the dense comparison) and XLA buffers past V = 3 are left to larger runs.
            "large_vocab": {
                **large_vocab,
                "k": 2,
                "restarts": 2,
                "max_steps": 10,
                "T": 32,
                "quality_V": [3, 200],
                "lbfgs_V": [],
                "dense_V": [3],
                "reference_V": 3,
                "reference_max_steps": 10,
                "reference_runs": [[2, 0], [2, 1]],
                "xla_memory_max_V": 3,
                "bound_V": [200],
                "bound_ks": [2],
                "bound_k": 2,
                "bound_k_V": [200],
                "tightness_V": [8],
                "tightness_T": 16,
                "tightness_ks": [2, 3],
                "repeat_s": 2.0,
            },
        }
    if mode == "quick":
        return {
            **sizes,
            "jaxfeat_budgets": [MAX_STEPS],
            "jaxfeat_budgets_batch": [50, MAX_STEPS],
            "optax_budgets_single": [50, 200],
            "optax_budgets_batch": [25, 100],
            "optax_budgets_ks": 100,
            "scipy_iters": [0, 10, 25, 50, 100, MAX_STEPS],
            "batch_size": 8,
            "batch_repeat_s": 20.0,
            "scipy_subset": 4,
            "optax_subsets": [4, 8],
            "optax_repeat_s": 3.0,
            "ks_max": 3,
            "ks_baseline": [1, 3],
            "scaling": {"batch_size": [1, 8], "k": [1, 8], "T": [64, 256], "V": [3, 10]},
            "scaling_cap_s": 10.0,
            "breakdown_size": 4,
            "breakdown_budgets": [100, MAX_STEPS],
            "large_vocab": {
                **large_vocab,
                "quality_V": [30, 100, 300, 1000],
                "lbfgs_V": [100],
                "reference_runs": [[8, 0]],
                "bound_k_V": [1000],
                "tightness_V": [8, 16],
            },
        }
    return {
        **sizes,
        "jaxfeat_budgets": [25, 50, 100, MAX_STEPS],
        "jaxfeat_budgets_batch": [25, 50, MAX_STEPS],
        "optax_budgets_single": [50, 200, 800],
        "optax_budgets_batch": [50, 200],
        "optax_budgets_ks": 200,
        "scipy_iters": [0, 5, 10, 25, 50, 100, 150, MAX_STEPS],
        "batch_size": 256,
        "batch_repeat_s": 300.0,
        "scipy_subset": 64,
        "optax_subsets": [4, 8],
        "optax_repeat_s": 5.0,
        "ks_max": 32,
        "ks_baseline": [1, 4, 16, 32],
        "scaling": {
            "batch_size": [1, 4, 16, 64, 256, 1024, 4096],
            "k": [1, 2, 4, 8, 16, 32, 64],
            "T": [64, 256, 1024, 4096],
            "V": [3, 10, 30, 100, 300, 1000],
        },
        "scaling_cap_s": 40.0,
        "breakdown_size": 16,
        "breakdown_budgets": [100, MAX_STEPS],
        "large_vocab": large_vocab,
    }


def goals(results: dict) -> dict:
    """The issues' targets, against what was measured: speed-ups on the 256-target batch, and the
    large-vocabulary section's quality, bound and growth-law targets (each where it ran)."""
    out = _batch_goals(results.get("batch"), results)
    lv = results.get("large_vocab")
    if lv:
        out.update(_large_vocab_goals(lv))
    return out


def _large_vocab_goals(lv: dict) -> dict:
    ref, growth = lv["reference"], lv["growth"]
    bounds = [b for b in lv["bound"].values() if "skipped" not in b]
    worst = [b["max_fit_over_bound"] for b in bounds]
    worst_all = None if not worst or None in worst else max(worst)
    at_k = lv["bound_at_k"]
    ratios = {V: p.get("fit_over_bound") for V, p in at_k["points"].items() if "skipped" not in p}
    slope, slope_cg = growth["time_slope_all"], growth["time_slope_cg"]
    return {
        "large_vocab_quality": {
            "required_max_default_over_best_long_dense": LV_QUALITY_FACTOR,
            "default_over_best_long_dense": ref.get("default_over_best_long_dense"),
            "default_over_long_dense_same_restarts": ref.get(
                "default_over_long_dense_same_restarts"
            ),
            "V": ref["V"],
            "met": bool(ref.get("met", False)),
        },
        "large_vocab_bound": {
            "required_max_fit_over_bound": LV_BOUND_FACTOR,
            "ks": lv["bound_ks"],
            "max_fit_over_bound": worst_all,
            "all_nonzero": bool(bounds and all(b["all_nonzero"] for b in bounds)),
            "V": [b["V"] for b in bounds],
            "met": bool(
                bounds
                and all(b["all_nonzero"] for b in bounds)
                and worst_all is not None
                and worst_all <= LV_BOUND_FACTOR
            ),
        },
        "large_vocab_bound_at_k": {
            "k": at_k["k"],
            "required_max_fit_over_bound": LV_BOUND_AT_K_FACTOR,
            "fit_over_bound": ratios,
            "met": bool(
                ratios and all(r is not None and r <= LV_BOUND_AT_K_FACTOR for r in ratios.values())
            ),
        },
        "large_vocab_growth": {
            "required_max_time_slope": LV_MAX_SLOPE,
            "time_slope_all": slope,
            "time_slope_cg": slope_cg,
            "met": bool(slope is not None and slope <= LV_MAX_SLOPE),
            "met_cg_points": bool(slope_cg is not None and slope_cg <= LV_MAX_SLOPE),
        },
    }


def _batch_goals(batch: dict | None, results: dict) -> dict:
    if not batch:
        return {}
    out = {}
    for name, need in (("scipy_lbfgsb", 30.0), ("optax_lbfgs", 5.0)):
        r = batch["comparison"][name]["jaxfeat_vs"][name]
        s = r["speedup_at_matched_loss"]
        out[name] = {
            "required_speedup": need,
            "measured_speedup_at_matched_loss": s,
            "lower_bound": r["lower_bound"],
            "met": bool(s is not None and s >= need),
            "batch_size": results["settings"]["config"]["batch_size"],
        }
    return out


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def default_out(mode: str) -> Path:
    """Where a run writes without ``--out``: the committed results for full and quick runs, a
    temporary file for a smoke run (never the repository's results)."""
    if mode == "smoke":
        return Path(tempfile.gettempdir()) / "jaxfeat_throughput_smoke.json"
    name = "throughput_cpu_quick.json" if mode == "quick" else "throughput_cpu.json"
    return Path("benchmarks/results") / name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes to check every section (compilation dominates); writes "
        "to a temporary file unless --out is given",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/throughput_cpu.json, or "
        "throughput_cpu_quick.json with --quick so a quick run never replaces "
        "the full results; a temporary file with --smoke)",
    )
    ap.add_argument("--device-label", default=None, help="free-text name of the machine")
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep every section already in --out (same mode) and run the asked-for ones "
        "that are not there yet",
    )
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out_path = args.out or default_out(mode)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    _clock()
    cfg = config(mode)
    R, M = cfg["restarts"], cfg["max_steps"]
    results: dict[str, Any] = {
        "environment": environment(args.device_label),
        "settings": {
            "mode": mode,
            "quick": mode == "quick",
            "config": cfg,
            "restarts": R,
            "activation": "relu",
            "solver_settings": dataclasses.asdict(SOLVER),
            "loss": "mean over the grid of KL(p || q) in nats, re-evaluated in float64",
            "stopping_rule": (
                f"jaxfeat and SciPy: every {WINDOW} iterations stop when the loss "
                f"fell by at most {FTOL:g} * loss + {ATOL:g}, at most {M} "
                "iterations; optax: a fixed number of steps"
            ),
            "starting_points": (
                "jaxfeat: its own; scipy_lbfgsb: jaxfeat's least-squares starts read off the "
                "public API (restart 0 exactly jaxfeat's first restart, the others at random "
                "knots, see jaxfeat_start); optax_lbfgs and scipy_lbfgsb_random_init: random "
                "(c, l, w, b)"
            ),
            "timing": (
                "seconds to block_until_ready; compile time from JAX's compile events; "
                "the machine may be shared, see the load averages"
            ),
            "memory": (
                "rss_peak_first_call_bytes: growth of the Linux resident-set high-water "
                "mark (VmHWM after clear_refs) during a first call, compiler included; "
                "xla_total_bytes: XLA's buffer sizes of the public fit_batch call compiled "
                "as one program (jax.jit(...).lower(...).compile().memory_analysis()); "
                "device_peak_bytes: the accelerator allocator's peak, where it has one"
            ),
        },
    }
    if args.resume and out_path.exists():
        old = json.loads(out_path.read_text())
        old_settings = old.get("settings", {})
        old_mode = old_settings.get("mode", "quick" if old_settings.get("quick") else "full")
        if old_mode == mode:
            # Every section already written is kept, asked for or not (so a run of one new
            # section adds it to the file); only the asked-for sections not yet there run.
            kept = [s for s in SECTIONS if s in old]
            results.update({s: old[s] for s in kept})
            results["environment"] = dict(old["environment"], resumed_with=results["environment"])
            sections = [s for s in sections if s not in kept]
            log(f"resuming: keeping {kept}")
    runners: dict[str, Callable[[], dict]] = {
        "single": lambda: section_single(cfg),
        "batch": lambda: section_batch(cfg),
        "ks": lambda: section_ks(cfg),
        "scaling": lambda: section_scaling(cfg, _batch_point(results)),
        "breakdown": lambda: section_breakdown(cfg),
        "large_vocab": lambda: section_large_vocab(cfg),
    }
    for s in sections:
        t0 = time.perf_counter()
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        results[s] = runners[s]()
        results[s].update(
            section_wall_s=time.perf_counter() - t0,
            started_utc=started,
            load_average_after=os.getloadavg(),
        )
        results["environment"]["load_average_end"] = os.getloadavg()
        results["goals"] = goals(results)
        results["total_wall_s"] = sum(
            results[x]["section_wall_s"] for x in SECTIONS if x in results
        )
        write_json(out_path, results)  # after every section, so a long run leaves partial results
        log(f"section {s} done in {results[s]['section_wall_s']:.1f}s")
    log(json.dumps(results.get("goals", {}), indent=1))
    log(f"results: {out_path}")
    return 0


def _batch_point(results: dict) -> dict | None:
    """The batch section's default jaxfeat call, as a point of the batch-size sweep."""
    batch = results.get("batch")
    if not batch:
        return None
    b = batch["methods"]["jaxfeat"]["budgets"][-1]
    size = results["settings"]["config"]["batch_size"]
    keep = ("first_s", "compile_s", "warm_s", "warm_method", "rss_peak_first_call_bytes")
    point = {k: b[k] for k in keep if k in b}
    point.update(
        targets=size,
        seconds_per_target=b["warm_s"] / size,
        loss=b["loss"],
        xla_total_bytes=b.get("xla_total_bytes"),
    )
    return {"size": size, "point": point}


if __name__ == "__main__":
    sys.exit(main())
