"""The fitting engine: mixtures of k linear logit features fitted to target curves.

Internally each feature is a hinge in the normalised latent ``u = (t - t_1) / (t_T - t_1)``:
``a_i(u) = relu(s_i (u - tau_i))`` with a fixed direction ``s_i = +-1`` chosen per restart and a
knot ``tau_i`` in the grid (JumpReLU adds a jump height ``h_i``; softplus a log-sharpness). The
parameters map exactly onto :class:`jaxfeat.Features` at the end (``w = s / (t_T - t_1)``, ...).

Why this parametrisation: for fixed knots the mean KL is convex in ``W = (c, l)`` (softmax
regression with soft labels), so every fit starts with a convex solve at curvature-equidistributed
knots; the knots then move jointly with ``W`` under a damped Gauss-Newton (Levenberg-Marquardt)
method whose curvature is the exact generalised Gauss-Newton matrix ``J^T (diag q - q q^T) J``
assembled from its Kronecker-structured blocks. Features that end up contributing nothing are
re-seeded where the pointwise KL is largest. Members (targets x restarts) run through a work queue
of vmapped lanes, each member at its own pace. Large problems (many parameters) or a user-given
optax optimiser use a first-order loop on the same loss instead.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from . import _validate
from ._model import Features, kl
from ._target import Target

# Dense Gauss-Newton solves cost O(P^3) per step, with P = (k + 1) V + k_enc parameters; past this
# size a first-order optimiser is faster (benchmarks/throughput.py).
LM_MAX_PARAMS = 600


# ---------------------------------------------------------------------------------------------
# Results


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "kl",
        "mean_kl",
        "max_kl",
        "converged",
        "num_steps",
        "restart_losses",
        "restart_converged",
        "k",
    ],
    meta_fields=["activation"],
)
@dataclasses.dataclass(frozen=True)
class FitResult:
    """Result of :func:`fit` (or, with a leading batch axis on every array, :func:`fit_batch`).

    Attributes:
      params: best restart's :class:`Features` (k features; in a batch, padded to ``k_max`` with
        zero logit vectors).
      kl: (T,) KL(p(t) || q(t)) of the best restart, in nats.
      mean_kl: mean of ``kl`` over the grid (the loss minimised).
      max_kl: max of ``kl`` over the grid.
      converged: whether the best restart stopped because its loss stalled (relative decrease
        below the tolerance over a window of steps) rather than by running out of steps.
      num_steps: optimiser steps the best restart took.
      restart_losses: (R,) final mean KL of every restart.
      restart_converged: (R,) convergence flag of every restart.
      k: number of features used.
      activation: encoder name.
    """

    params: Features
    kl: jax.Array
    mean_kl: jax.Array
    max_kl: jax.Array
    converged: jax.Array
    num_steps: jax.Array
    restart_losses: jax.Array
    restart_converged: jax.Array
    k: jax.Array
    activation: str = "relu"

    def take(self, i: int, k: int | None = None) -> FitResult:
        """The i-th fit of a batched result (from :func:`fit_batch`), trimmed to its k features.

        Args:
          i: index into the batch.
          k: its number of features; default ``self.k[i]`` (pass it where that is traced).

        Returns:
          :class:`FitResult` without the batch axis, ``params`` holding exactly k features.

        Example:
          >>> import jaxfeat
          >>> tgt = jaxfeat.targets.temperature(nonmonotone=True)
          >>> res = jaxfeat.fit_batch(tgt.t, tgt.probs[None].repeat(2, 0), [1, 2], restarts=4)
          >>> res.take(0).params.l.shape, res.take(1).params.l.shape
          ((1, 3), (2, 3))
        """
        one = jax.tree.map(lambda x: x[i], self)
        k = int(one.k) if k is None else k
        return dataclasses.replace(one, params=_trim(one.params, k))


# ---------------------------------------------------------------------------------------------
# Internal parametrisation


class _Member(NamedTuple):
    """One restart of one target: the optimisation state."""

    W: jax.Array  # (k+1, V): row 0 is c, rows 1.. are the logit vectors
    tau: jax.Array  # (k,) knots in normalised units
    e: jax.Array  # (k,) jump height (jumprelu) or log-sharpness (softplus); unused for relu
    s: jax.Array  # (k,) directions, fixed
    mask: jax.Array  # (k,) 1 for features in use
    loss: jax.Array
    lam: jax.Array
    ref_loss: jax.Array
    since_ref: jax.Array
    converged: jax.Array
    steps: jax.Array
    phase: jax.Array  # LM: 0 convex, 1 joint, 2 convex after re-seeding, 3 joint, 4 done
    jumps_early: jax.Array  # JumpReLU: jump heights free from the first joint phase on


class _Settings(NamedTuple):
    activation: str
    max_steps: int
    ftol: float
    atol: float
    window: int
    convex_steps: int
    lapack: bool = True  # Cholesky through LAPACK; False: plain jnp ops (see _spd_solve)

    def phase_steps(self, phase):
        """Step budget of each LM phase: short convex solves around two joint stretches."""
        joint = max(self.max_steps - 2 * self.convex_steps, 2)
        return jnp.array([self.convex_steps, joint // 2, self.convex_steps, joint - joint // 2, 0])[
            phase
        ]


@jax.custom_jvp
def _step(x: jax.Array, eps: jax.Array) -> jax.Array:
    return (x > 0).astype(x.dtype)


@_step.defjvp
def _step_jvp(primals, tangents):
    # Straight-through rectangle pseudo-derivative of the Heaviside step (as in JumpReLU SAEs):
    # moving a jump across a grid cell of width eps changes the loss, so its knot gets a gradient.
    x, eps = primals
    dx, _ = tangents
    return _step(x, eps), dx * (jnp.abs(x) < eps / 2).astype(x.dtype) / eps


# Arrays over the grid keep it as the minor axis, (k, T) and (V, T): with V = 3 minor, XLA's CPU
# reductions over V and small contractions run several times slower (benchmarks/throughput.py).


def _acts(u, tau, e, s, activation: str, eps):
    """(k, T) activations of the k hinges on the grid u."""
    x = s[:, None] * (u - tau[:, None])
    if activation == "relu":
        return jax.nn.relu(x)
    if activation == "jumprelu":
        return _step(x, eps) * (e[:, None] + x)
    kappa = jnp.exp(e)[:, None]
    return jax.nn.softplus(kappa * x) / kappa


def _log_softmax_q(W, a):
    """(V, T) model log-probabilities from the (k, T) activations."""
    z = W[0][:, None] + W[1:].T @ a
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=0, keepdims=True))
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=0))


def _loss_terms(W, tau, e, s, mask, u, p, activation, eps):
    """(T,) pointwise KL(p(t) || q(t)) for the (T, V) target p."""
    a = _acts(u, tau, e, s, activation, eps) * mask[:, None]
    pT = p.T
    positive = pT > 0  # as in jaxfeat.kl: 0 log 0 = 0, and log p is never evaluated at 0
    log_p = jnp.log(jnp.where(positive, pT, 1.0))
    return jnp.sum(jnp.where(positive, pT * (log_p - _log_softmax_q(W, a)), 0.0), axis=0)


def _mean_loss(W, tau, e, s, mask, u, p, activation, eps):
    return jnp.mean(_loss_terms(W, tau, e, s, mask, u, p, activation, eps))


def _bounds(u, s):
    """Knot box that keeps every feature active on at least one grid point."""
    lo = jnp.where(s > 0, u[0], u[1])
    hi = jnp.where(s > 0, u[-2], u[-1])
    return lo, hi


def _project(tau, e, s, u, activation):
    lo, hi = _bounds(u, s)
    tau = jnp.clip(tau, lo, hi)
    if activation == "jumprelu":
        e = jnp.maximum(e, 0.0)
    elif activation == "softplus":
        e = jnp.clip(e, 0.0, 8.0)
    return tau, e


def _enc_count(activation: str) -> int:
    return 1 if activation == "relu" else 2


# ---------------------------------------------------------------------------------------------
# Levenberg-Marquardt step with the exact generalised Gauss-Newton matrix


def _lm_step(m: _Member, u, p, cfg: _Settings, eps) -> _Member:
    T, V = p.shape
    k = m.tau.shape[0]
    K1 = k + 1
    act = cfg.activation

    def acts_of(tau, e):
        return _acts(u, tau, e, m.s, act, eps) * m.mask[:, None]

    a = acts_of(m.tau, m.e)
    q = jnp.exp(_log_softmax_q(m.W, a)).T
    # The GGN contractions below measured fastest with the grid as the major axis.
    X = jnp.concatenate([jnp.ones((T, 1), a.dtype), a.T], axis=1)
    r = (q - p) / T
    gW = X.T @ r
    # GGN block for W: sum_t (X_t X_t^T) kron (diag q_t - q_t q_t^T) / T.
    Y = X[:, :, None] * q[:, None, :]
    HW = jnp.einsum("ti,tj,tv->ivj", X, X, q) / T
    HW = (
        jnp.einsum("ivj,vw->ivjw", HW, jnp.eye(V, dtype=q.dtype))
        - jnp.einsum("tiv,tjw->ivjw", Y, Y) / T
    )
    HW = HW.reshape(K1 * V, K1 * V)
    frozen_W = jnp.concatenate([jnp.zeros(1, bool), m.mask == 0])
    # Knots move only in the joint phases; in the others (c, l) solve a convex problem.
    free_enc = (m.phase == 1) | (m.phase == 3)
    tangent = jnp.ones_like(m.tau)
    D = [jax.jvp(lambda tt: acts_of(tt, m.e), (m.tau,), (tangent,))[1]]
    if act != "relu":
        D.append(jax.jvp(lambda ee: acts_of(m.tau, ee), (m.e,), (tangent,))[1])
    D = jnp.concatenate(D, axis=0).T  # (T, nE)
    L = jnp.concatenate([m.W[1:]] * (D.shape[1] // k), axis=0)  # (nE, V)
    gE = jnp.einsum("tj,jv,tv->j", D, L, r)
    Gl = q[:, None, :] * (L[None] - jnp.einsum("tv,jv->tj", q, L)[:, :, None])
    HWE = jnp.einsum("ti,tj,tjv->ivj", X, D, Gl).reshape(K1 * V, -1) / T
    HEE = jnp.einsum("tj,tk,tjv,kv->jk", D, D, Gl, L) / T
    H = jnp.block([[HW, HWE], [HWE.T, HEE]])
    g = jnp.concatenate([gW.reshape(-1), gE])
    frozen_enc = jnp.tile(m.mask == 0, D.shape[1] // k) | ~free_enc
    if act == "jumprelu":
        # JumpReLU contains ReLU (zero jumps), but its loss is piecewise constant in where a jump
        # sits, which traps Gauss-Newton on smooth targets; so half the restarts fit a ReLU first
        # and grow jumps from that solution, the other half start with visible jumps (which
        # find real steps in the target).
        frozen_enc = frozen_enc | ((jnp.arange(2 * k) >= k) & (m.phase < 3) & ~m.jumps_early)
    frozen = jnp.concatenate([jnp.repeat(frozen_W, V), frozen_enc])
    d = jnp.diag(H)
    dmin = 1e-9 * jnp.max(d) + jnp.finfo(d.dtype).tiny
    damp = m.lam * jnp.maximum(d, dmin) + dmin
    H = jnp.where(frozen[:, None] | frozen[None, :], 0.0, H)
    H = H + jnp.diag(jnp.where(frozen, 1.0, damp))
    g = jnp.where(frozen, 0.0, g)
    if cfg.lapack:
        delta = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H, lower=True), g)
    else:
        delta = _spd_solve(H, g)
    W = m.W - delta[: K1 * V].reshape(K1, V)
    dE = delta[K1 * V :]
    tau, e = m.tau - dE[:k], m.e
    if act != "relu":
        e = e - dE[k:]
    tau, e = _project(tau, e, m.s, u, act)
    new_loss = _mean_loss(W, tau, e, m.s, m.mask, u, p, act, eps)
    accept = jnp.isfinite(new_loss) & (new_loss <= m.loss)
    pick = lambda new, old: jnp.where(accept, new, old)
    lam = jnp.where(accept, jnp.maximum(m.lam / 3, 1e-7), jnp.minimum(m.lam * 4, 1e10))
    return _advance(
        m, pick(W, m.W), pick(tau, m.tau), pick(e, m.e), pick(new_loss, m.loss), lam, cfg
    )


def _spd_solve(H, g):
    """Solves H x = g for symmetric positive-definite (n, n) H and (n,) or (n, m) g, by Cholesky
    in plain jnp ops.

    About 4x slower than LAPACK's, but with several host devices XLA's CPU runtime can stall in
    concurrent LAPACK calls (seen with ``--xla_force_host_platform_device_count``), so sharded
    CPU runs use this. A non-positive pivot gives NaN, and the step is rejected.
    """
    n = H.shape[-1]
    idx = jnp.arange(n)

    def factor(j, c):
        A, L = c
        col = jnp.where(idx >= j, A[:, j] / jnp.sqrt(A[j, j]), 0.0)
        return A - col[:, None] * col[None, :], L.at[:, j].set(col)

    _, L = jax.lax.fori_loop(0, n, factor, (H, jnp.zeros_like(H)), unroll=True)
    y = jax.lax.fori_loop(
        0, n, lambda j, y: y.at[j].set((g[j] - L[j] @ y) / L[j, j]), jnp.zeros_like(g), unroll=True
    )

    def back(i, x):
        j = n - 1 - i
        return x.at[j].set((y[j] - L[:, j] @ x) / L[j, j])

    return jax.lax.fori_loop(0, n, back, jnp.zeros_like(g), unroll=True)


def _advance(m: _Member, W, tau, e, loss, lam, cfg: _Settings) -> _Member:
    """Shared bookkeeping: stall-based convergence over a window, and freezing converged members."""
    since = m.since_ref + 1
    check = since >= cfg.window
    stalled = m.ref_loss - loss <= cfg.ftol * loss + cfg.atol
    converged = m.converged | (check & stalled)
    new = m._replace(
        W=W,
        tau=tau,
        e=e,
        loss=loss,
        lam=lam,
        ref_loss=jnp.where(check, loss, m.ref_loss),
        since_ref=jnp.where(check, 0, since),
        converged=converged,
        steps=m.steps + 1,
    )
    return _where(m.converged, m, new)


def _reset_progress(m: _Member) -> _Member:
    return m._replace(
        lam=jnp.full_like(m.lam, 1e-3),
        ref_loss=jnp.full_like(m.loss, jnp.inf),
        since_ref=jnp.zeros_like(m.since_ref),
        converged=jnp.zeros_like(m.converged),
    )


def _run_queue(members: _Member, step_fn, reseed_fn, p, lanes: int, restarts: int,
               cfg: _Settings) -> _Member:
    """Runs the (n,) initial ``members`` (member i = restart i % R of target i // R) through
    ``lanes`` vmapped slots of one loop; each member goes through its LM phases at its own pace.

    A member leaves a phase when it has converged or used the phase's step budget; entering
    phase 2 re-seeds its dead features; after phase 3 it is done (phase 4), its slot stores it
    and takes the next task. Members need from a few dozen to ``max_steps`` steps, so a slot per
    member for the whole run would spend most steps on members already done.

    ``step_fn(members, p)`` and ``reseed_fn(members, p)`` act on (lanes,) batches; ``p`` holds
    each target's probabilities. Returns the (n,) final members.
    """
    S = lanes
    n_tasks = members.loss.shape[0]
    target_of = lambda task: jnp.minimum(task, n_tasks - 1) // restarts

    def advance_phase(m, entered, pp):
        nxt = jnp.where(
            m.converged | (m.steps - entered >= cfg.phase_steps(m.phase)), m.phase + 1, m.phase
        )
        nxt = jnp.minimum(nxt, 4)
        moved = nxt != m.phase
        m2 = m._replace(phase=nxt)
        enter2 = moved & (nxt == 2)
        # Few steps have a member entering phase 2; the others skip re-seeding altogether (the
        # predicate is loop-wide, so this is a real branch, not a select).
        m2 = jax.lax.cond(
            jnp.any(enter2),
            lambda m2: _where(enter2, reseed_fn(m2, pp), m2),
            lambda m2: m2,
            m2,
        )
        m2 = _where(moved & (nxt < 4), _reset_progress(m2), m2)
        return m2, jnp.where(moved, m.steps, entered)

    def cond(c):
        return jnp.any(c[0].phase < 4)

    def body(c):
        ms, entered, task, next_task, results = c
        pp = p[target_of(task)]
        active = ms.phase < 4
        ms = _where(active, step_fn(ms, pp), ms)
        ms, entered = advance_phase(ms, entered, pp)
        finished = active & (ms.phase == 4)
        # Finished members are written to their task's row; index n_tasks drops the write.
        row = jnp.where(finished, task, n_tasks)
        results = jax.tree.map(lambda r, x: r.at[row].set(x, mode="drop"), results, ms)
        new_task = next_task + jnp.cumsum(finished) - 1
        take = finished & (new_task < n_tasks)
        task = jnp.where(finished, jnp.where(take, new_task, n_tasks), task)
        fresh = jax.tree.map(lambda r: r[jnp.minimum(task, n_tasks - 1)], results)
        ms = _where(take, fresh, ms)
        entered = jnp.where(take, 0, entered)
        return ms, entered, task, jnp.minimum(next_task + jnp.sum(finished), n_tasks), results

    # ``results`` starts as the queue of initial members; a slot reads its member from its row
    # and writes it back when done.
    task = jnp.arange(S)
    state = (jax.tree.map(lambda r: r[:S], members), jnp.zeros(S, jnp.int32), task,
             jnp.asarray(S), members)
    return jax.lax.while_loop(cond, body, state)[-1]


def _where(flag, a, b):
    """Per-member select between two batched pytrees."""
    return jax.tree.map(lambda x, y: jnp.where(_bcast(flag, x), x, y), a, b)


def _bcast(flag, x):
    return flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim))


# ---------------------------------------------------------------------------------------------
# First-order path (any optax optimiser)


def _optax_run(members: _Member, u, p, cfg: _Settings, opt, n_steps: int, eps) -> _Member:
    act = cfg.activation
    opt = optax.with_extra_args_support(opt)

    def one(m: _Member, p):
        def loss_fn(x):
            W, tau, e = x
            tau, e = _project(tau, e, m.s, u, act)
            return _mean_loss(
                W * jnp.concatenate([jnp.ones(1), m.mask])[:, None],
                tau,
                e,
                m.s,
                m.mask,
                u,
                p,
                act,
                eps,
            )

        return loss_fn

    def init(m, p):
        return opt.init((m.W, m.tau, m.e))

    states = _vm(init)(members, p)

    def step(carry):
        ms, st = carry

        def upd(m, s, p):
            fn = one(m, p)
            x = (m.W, m.tau, m.e)
            val, grad = jax.value_and_grad(fn)(x)
            updates, s2 = opt.update(grad, s, x, value=val, grad=grad, value_fn=fn)
            W, tau, e = optax.apply_updates(x, updates)
            tau, e = _project(tau, e, m.s, u, act)
            W = W * jnp.concatenate([jnp.ones(1), m.mask])[:, None]
            new_loss = fn((W, tau, e))
            ok = jnp.isfinite(new_loss)
            new = _advance(
                m,
                jnp.where(ok, W, m.W),
                jnp.where(ok, tau, m.tau),
                jnp.where(ok, e, m.e),
                jnp.where(ok, new_loss, m.loss),
                m.lam,
                cfg,
            )
            s2 = _where(m.converged, s, s2)
            return new, s2

        return _vm(upd)(ms, st, p)

    start = members.steps

    def cond(c):
        ms = c[0]
        return jnp.any(~ms.converged & (ms.steps - start < n_steps))

    def body(c):
        new = step(c)
        done = c[0].steps - start >= n_steps
        return _where(done, c, new)

    return jax.lax.while_loop(cond, body, (members, states))[0]


def _vm(fn):
    """vmap over targets (axis 0) and restarts (axis 1); the target's probs map over axis 0 only."""

    def inner(*args):
        *ms, p = args
        return jax.vmap(fn, in_axes=(0,) * len(ms) + (None,))(*ms, p)

    def outer(*args):
        return jax.vmap(inner)(*args)

    return outer


# ---------------------------------------------------------------------------------------------
# Initialisation


def _knot_density(u, p):
    """Curvature density g^(1/5), g = Var_p(z''), the optimal free-knot density for mean KL."""
    z = jnp.log(jnp.maximum(p, 1e-30))
    z = jnp.maximum(z, jnp.max(z, axis=1, keepdims=True) - 30.0)
    d1 = jnp.diff(z, axis=0) / jnp.diff(u)[:, None]
    mid = (u[1:] + u[:-1]) / 2
    d2 = jnp.diff(d1, axis=0) / jnp.diff(mid)[:, None]
    d2 = jnp.concatenate([d2[:1], d2, d2[-1:]], axis=0) if d2.shape[0] else jnp.zeros_like(z)
    mean = jnp.sum(p * d2, axis=1, keepdims=True)
    g = jnp.sum(p * (d2 - mean) ** 2, axis=1)
    dens = jnp.maximum(g, 0.0) ** 0.2
    return dens + 0.05 * jnp.mean(dens) + 1e-12


def _quantile_knots(u, p, levels):
    """Knots at the given quantile levels (in [0, 1]) of the cumulative curvature density."""
    dens = _knot_density(u, p)
    cum = jnp.concatenate(
        [jnp.zeros(1, u.dtype), jnp.cumsum((dens[1:] + dens[:-1]) / 2 * jnp.diff(u))]
    )
    cum = cum / cum[-1]
    return jnp.interp(levels, cum, u)


def _init_member(key, r, k_used, k_max: int, n_restarts: int, u, p, activation: str, init_knots):
    """Initial knots, directions and (c, l) for restart r with k_used active features.

    k hinges with knots in the grid make a continuous piecewise-linear logit path with k + 1 pieces
    and one linear constraint on the slopes, fixed by the directions. Restart 0 (and its mirror,
    restart 1) uses one feature as the linear term (knot at the grid's end) and k - 1 interior
    knots, i.e. k free pieces. Later restarts put k knots at curvature quantiles and cycle through
    all 2^k direction patterns when there are enough restarts (small k, where the pattern matters
    most); otherwise even restarts put the flat piece at position f (first f features face left)
    for f = 0, k, then a golden-ratio sequence, and odd restarts draw random directions. Knots are
    jittered once every pattern has been tried.
    """
    dtype = p.dtype
    j = jnp.arange(k_max)
    active = j < k_used
    kf = k_used.astype(dtype)
    k1, k2 = jax.random.split(key)
    lead = r < 2
    n_pat = jnp.left_shift(1, jnp.minimum(k_used, 30))
    enumerate_all = n_pat <= n_restarts - 2
    bits = jnp.right_shift(jnp.mod(r - 2, n_pat), j) & 1
    golden = jnp.floor(jnp.mod((r // 2 - 2) * 0.6180339887 + 0.5, 1.0) * (kf + 1))
    flat = jnp.where(r == 2, 0.0, jnp.where(r == 3, kf, golden))
    structured = jnp.where(j < flat, -1.0, 1.0)
    rand_s = jnp.where(jax.random.bernoulli(k2, 0.5, (k_max,)), 1.0, -1.0)
    s = jnp.where(enumerate_all, 1.0 - 2.0 * bits, jnp.where(r % 2 == 1, rand_s, structured))
    s = jnp.where(lead, jnp.where(r == 0, 1.0, -1.0), s).astype(dtype) * jnp.ones(k_max, dtype)
    repeat = jnp.where(enumerate_all, r - 2 >= n_pat, r >= 4)
    n_int = jnp.where(lead, kf - 1, kf)
    jj = jnp.where(lead, j - 1, j).astype(dtype)
    jitter = jnp.where(repeat, jax.random.uniform(k1, (k_max,), dtype, -0.3, 0.3), 0.0)
    levels = jnp.clip((jj + 1 + jitter) / (n_int + 1), 0.0, 1.0)
    tau = _quantile_knots(u, p, levels)
    lin = lead & (j == 0)
    tau = jnp.where(lin, jnp.where(s > 0, u[0], u[-1]), tau)
    if init_knots is not None:
        given = jnp.isfinite(init_knots)
        tau = jnp.where((r == 0) & given, init_knots, tau)
        s = jnp.where((r == 0) & given, 1.0, s)
    lo, hi = _bounds(u, s)
    tau = jnp.clip(tau, lo, hi)
    mask = active.astype(dtype)
    if activation == "jumprelu":
        e = jnp.where(r % 4 >= 2, 0.5, 0.0) * jnp.ones(k_max, dtype)  # see _lm_step
    elif activation == "softplus":
        e = jnp.full(k_max, jnp.log(30.0), dtype)
    else:
        e = jnp.zeros(k_max, dtype)
    # Least squares on clipped log-probabilities: a cheap start for the convex (c, l) solve.
    eps = 1.0 / (u.shape[0] - 1)
    a = _acts(u, tau, e, s, activation, eps).T * mask
    X = jnp.concatenate([jnp.ones((u.shape[0], 1), dtype), a], axis=1)
    z = jnp.log(jnp.maximum(p, 1e-30))
    z = jnp.maximum(z, jnp.max(z, axis=1, keepdims=True) - 20.0)
    z = z - z.mean(axis=1, keepdims=True)
    A = X.T @ X
    # A small ridge system: plain jnp ops keep LAPACK out of sharded CPU runs (see _spd_solve).
    W = _spd_solve(A + 1e-6 * jnp.trace(A) / (k_max + 1) * jnp.eye(k_max + 1, dtype=dtype), X.T @ z)
    W = W * jnp.concatenate([jnp.ones(1, dtype), mask])[:, None]
    loss = _mean_loss(W, tau, e, s, mask, u, p, activation, eps)
    return _Member(
        W=W,
        tau=tau,
        e=e,
        s=s,
        mask=mask,
        loss=loss,
        lam=jnp.asarray(1e-3, dtype),
        ref_loss=jnp.asarray(jnp.inf, dtype),
        since_ref=jnp.asarray(0),
        converged=jnp.asarray(False),
        steps=jnp.asarray(0),
        phase=jnp.asarray(0),
        jumps_early=r % 4 >= 2,
    )


def _reseed(m: _Member, u, p, activation, eps) -> _Member:
    """Moves features that contribute nothing to the grid points where the fit is worst."""
    a = _acts(u, m.tau, m.e, m.s, activation, eps) * m.mask[:, None]
    l = m.W[1:]
    spread = jnp.max(l, axis=1) - jnp.min(l, axis=1)
    contrib = jnp.max(jnp.abs(a), axis=1) * spread
    dead = (contrib < 1e-3 * jnp.max(contrib) + 1e-12) & (m.mask > 0)
    per_point = _loss_terms(m.W, m.tau, m.e, m.s, m.mask, u, p, activation, eps)
    # The i-th dead feature goes to the i-th worst grid point (top_k: far cheaper than a sort).
    n_top = min(m.tau.shape[0], u.shape[0])
    worst = jax.lax.top_k(per_point, n_top)[1]
    slot = jnp.cumsum(dead) - 1
    new_tau = u[worst[jnp.clip(slot, 0, n_top - 1)]]
    lo, hi = _bounds(u, m.s)
    tau = jnp.where(dead, jnp.clip(new_tau, lo, hi), m.tau)
    W = m.W.at[1:].set(jnp.where(dead[:, None], 0.0, l))
    return m._replace(W=W, tau=tau)


# ---------------------------------------------------------------------------------------------
# The compiled kernel


# On CPU a step is bound by memory traffic: its intermediates are (lanes, T, (k + 1) V) arrays.
# Lanes whose intermediates fit in cache make a step ~2.5x faster per member than one vmap over
# the whole batch (benchmarks/throughput.py). Accelerators want as many lanes as there are
# members, up to a cap on memory.
CPU_LANE_BYTES = 2**21
ACCELERATOR_LANES = 2**16


def _lanes(n_members: int, T: int, V: int, k_max: int, itemsize: int, platform: str) -> int:
    """Work-queue slots of the Gauss-Newton loop on one device."""
    if platform != "cpu":
        return max(1, min(n_members, ACCELERATOR_LANES))
    per_member = T * (k_max + 1) * V * itemsize
    return int(np.clip(CPU_LANE_BYTES // per_member, 1, max(n_members, 1)))


@functools.partial(
    jax.jit,
    static_argnames=(
        "k_max", "restarts", "activation", "max_steps", "optimizer", "use_lm", "lanes", "devices"
    ),
)
def _fit_kernel(
    u, p, k_used, keys, init_knots, *, k_max, restarts, activation, max_steps, optimizer, use_lm,
    lanes, devices=1,
):
    """u (T,), p (B, T, V), k_used (B,), keys (B,), init_knots (B, k_max) (NaN where free).

    Damped Gauss-Newton runs the B * restarts members through ``lanes`` vmapped slots of a work
    queue (:func:`_run_queue`); a first-order optimiser runs them all at once. With ``devices`` > 1
    the target axis (B a multiple of ``devices``) is split over the first ``devices`` devices.
    """
    dtype = p.dtype
    f32 = dtype == jnp.float32
    cfg = _Settings(
        activation=activation,
        max_steps=max_steps,
        ftol=1e-5 if f32 else 1e-8,
        atol=1e-9 if f32 else 1e-15,
        window=5,
        convex_steps=12,
        lapack=devices == 1 or jax.default_backend() != "cpu",
    )
    eps = jnp.asarray(1.0 / (u.shape[0] - 1), dtype)
    R = restarts

    def init_target(key, k_u, p, knots):
        ks = jax.random.split(key, R)
        return jax.vmap(lambda kk, r: _init_member(kk, r, k_u, k_max, R, u, p, activation, knots))(
            ks, jnp.arange(R)
        )

    def local(p, k_used, keys, knots):
        B = p.shape[0]
        members = jax.vmap(init_target)(keys, k_used, p, knots)
        if not use_lm:
            return _optax_run(_reset_progress(members), u, p, cfg, optimizer, max_steps, eps)
        members = jax.tree.map(lambda x: x.reshape((B * R, *x.shape[2:])), members)
        step = jax.vmap(lambda m, pp: _lm_step(m, u, pp, cfg, eps))
        reseed = jax.vmap(lambda m, pp: _reseed(m, u, pp, activation, eps))
        out = _run_queue(members, step, reseed, p, min(lanes, B * R), R, cfg)
        return jax.tree.map(lambda x: x.reshape((B, R, *x.shape[1:])), out)

    if devices == 1:
        return local(p, k_used, keys, init_knots)
    # Targets are independent: each device runs its share with no communication (so there is
    # nothing for shard_map's replication checks to verify).
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("batch",))
    spec = jax.sharding.PartitionSpec("batch")
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(
        p, k_used, keys, init_knots
    )


def _to_features(m: _Member, t0, span, activation) -> Features:
    """Maps the internal hinge parametrisation onto the public encoder parameters."""
    s, tau, e = m.s, m.tau, m.e
    knot_t = t0 + tau * span
    c, l = m.W[..., 0, :], m.W[..., 1:, :]
    if activation == "softplus":
        kappa = jnp.exp(e)
        w = kappa * s / span
        return Features(c, l / kappa[..., None], w, -w * knot_t, jnp.zeros_like(w))
    w = s / span
    theta = e if activation == "jumprelu" else jnp.zeros_like(w)
    return Features(c, l, w, theta - w * knot_t, theta)


def _select(members: _Member, t, p, activation) -> FitResult:
    """Picks each target's best restart and evaluates it with the public model."""
    from ._model import log_probs

    losses = jnp.where(jnp.isfinite(members.loss), members.loss, jnp.inf)
    best = jnp.argmin(losses, axis=1)
    pick = jax.tree.map(
        lambda x: jnp.take_along_axis(
            x, _bcast(best, x[:, :1]) if x.ndim > 1 else best[:, None], axis=1
        )[:, 0],
        members,
    )
    params = _to_features(pick, t[0], t[-1] - t[0], activation)
    params = params._replace(l=params.l * pick.mask[..., None])
    lq = jax.vmap(lambda prm: log_probs(prm, t, activation))(params)
    # KL >= 0; rounding can leave an exact fit's value a few ulps below zero.
    kls = jnp.maximum(kl(p, lq), 0.0)
    return FitResult(
        params=params,
        kl=kls,
        mean_kl=kls.mean(axis=1),
        max_kl=kls.max(axis=1),
        converged=pick.converged,
        num_steps=pick.steps,
        restart_losses=members.loss,
        restart_converged=members.converged,
        k=pick.mask.sum(axis=1).astype(jnp.int32),
        activation=activation,
    )


# ---------------------------------------------------------------------------------------------
# Public entry points


def fit_batch(
    t: ArrayLike,
    probs: ArrayLike,
    k: int | ArrayLike,
    *,
    activation: str = "relu",
    restarts: int = 16,
    max_steps: int = 200,
    key: int | jax.Array = 0,
    optimizer: optax.GradientTransformation | None = None,
    k_max: int | None = None,
    init_knots: ArrayLike | None = None,
) -> FitResult:
    """Fits k-feature models to B targets on one grid in one compiled call.

    Targets, restarts and feature counts are vmapped together; a batch may mix feature counts
    (``k`` of shape (B,)): every member uses ``k_max`` feature slots and masks the unused ones, so
    a sweep over k compiles once.

    Args:
      t: (T,) strictly increasing grid.
      probs: (B, T, V) target distributions.
      k: number of features, an int or (B,) ints.
      activation: ``"relu"``, ``"jumprelu"`` or ``"softplus"``.
      restarts: restarts per target (the best is kept).
      max_steps: optimiser steps per restart.
      key: integer seed or PRNG key (split into one key per target), or (B,) PRNG keys, one per
        target; the same key gives the same result.
      optimizer: any ``optax.GradientTransformation``; ``None`` uses damped Gauss-Newton when the
        model has at most ``LM_MAX_PARAMS`` parameters and ``optax.lbfgs`` otherwise.
      k_max: feature slots (default ``max(k)``); fix it to reuse one compilation across calls.
      init_knots: optional (B, k_max) knot positions in units of t for the first restart
        (NaN where free), e.g. the breakpoints of an optimal segmentation.

    Returns:
      :class:`FitResult` with a leading axis B on every array; ``params`` padded to ``k_max``.

    Example:
      >>> import jaxfeat
      >>> tgt = jaxfeat.targets.oscillating(1, n=64)
      >>> res = fit_batch(tgt.t, tgt.probs[None], k=[4], restarts=4)
      >>> res.mean_kl.shape, bool(res.mean_kl[0] < 1e-2)
      ((1,), True)
    """
    _validate.activation(activation)
    restarts = _validate.positive_int(restarts, "restarts")
    max_steps = _validate.positive_int(max_steps, "max_steps")
    _validate.grid(t, "t")
    if np.ndim(probs) != 3:
        raise ValueError(f"probs must be (B, T, V), got shape {np.shape(probs)}; add a batch axis.")
    _validate.matching_grid(t, probs)
    _validate.simplex_rows(probs, "probs")
    B = np.shape(probs)[0]
    traced_k = _validate.is_traced(k)
    if traced_k:
        if k_max is None:
            raise ValueError("k is traced; pass k_max (the number of feature slots) explicitly.")
        ks = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (B,))
    else:
        k_arr = np.broadcast_to(np.asarray(k), (B,))
        for kv in np.unique(k_arr):
            _validate.positive_int(kv.item(), "k")
        ks = jnp.asarray(k_arr, jnp.int32)
        k_top = int(k_arr.max())
        if k_max is None:
            k_max = k_top
        elif k_max < k_top:
            raise ValueError(f"k_max={k_max} is smaller than the largest k={k_top}; raise k_max.")
    k_max = _validate.positive_int(k_max, "k_max")
    p = jnp.asarray(probs)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.result_type(float))
    t = jnp.asarray(t, p.dtype)
    u = (t - t[0]) / (t[-1] - t[0])
    if (
        isinstance(key, jax.Array)
        and key.ndim == 1
        and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        if key.shape[0] != B:
            raise ValueError(f"key holds {key.shape[0]} keys but probs has B = {B} targets.")
        keys = key
    else:
        keys = jax.random.split(_key(key), B)
    knots = jnp.full((B, k_max), jnp.nan, p.dtype)
    if init_knots is not None:
        if np.shape(init_knots) != (B, k_max):
            raise ValueError(
                f"init_knots must be (B, k_max) = {(B, k_max)}, got {np.shape(init_knots)}."
            )
        knots = (jnp.asarray(init_knots, p.dtype) - t[0]) / (t[-1] - t[0])
    n_params = (k_max + 1) * p.shape[-1] + _enc_count(activation) * k_max
    use_lm = optimizer is None and n_params <= LM_MAX_PARAMS
    if optimizer is None and not use_lm:
        optimizer = optax.lbfgs()
    devices = 1 if _validate.is_traced(p, ks, keys, knots) else jax.device_count()
    args = _pad_batch((p, ks, keys, knots), devices)
    lanes = _lanes(
        args[0].shape[0] // devices * restarts, p.shape[1], p.shape[2], k_max, p.dtype.itemsize,
        jax.default_backend(),
    )
    members = _fit_kernel(
        u,
        *args,
        k_max=k_max,
        restarts=restarts,
        activation=activation,
        max_steps=max_steps,
        optimizer=optimizer,
        use_lm=use_lm,
        lanes=lanes,
        devices=devices,
    )
    members = jax.tree.map(lambda x: x[:B], members)
    return _select(members, t, p, activation)


def _pad_batch(arrays, devices: int):
    """Pads the target axis to a multiple of the device count by repeating the last target."""
    pad = -arrays[0].shape[0] % devices
    if not pad:
        return arrays
    return tuple(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in arrays)


def fit(
    target: Target,
    k: int,
    *,
    activation: str = "relu",
    restarts: int = 16,
    max_steps: int = 200,
    key: int | jax.Array = 0,
    optimizer: optax.GradientTransformation | None = None,
    k_max: int | None = None,
    init_knots: ArrayLike | None = None,
) -> FitResult:
    """Fits a mixture of k linear logit features to one target curve.

    Minimises the mean over the grid of ``KL(p(t) || softmax(c + sum_i a_i(t) l_i))`` over
    ``(c, l, w, b)`` (and JumpReLU thresholds), keeping the best of ``restarts`` restarts.

    Args:
      target: the curve to fit.
      k: number of features (>= 1).
      activation: ``"relu"``, ``"jumprelu"`` or ``"softplus"``.
      restarts: restarts (>= 1).
      max_steps: optimiser steps per restart.
      key: integer seed or PRNG key.
      optimizer: any ``optax.GradientTransformation``, or ``None`` for the default (see
        :func:`fit_batch`).
      k_max: pad to this many feature slots so calls with different k share one compilation.
      init_knots: optional (k,) knot positions in units of t for the first restart.

    Returns:
      :class:`FitResult` with ``params`` holding exactly k features.

    Example:
      >>> import jaxfeat
      >>> res = fit(jaxfeat.targets.html_closing_tag(), k=1)
      >>> bool(res.mean_kl < 1e-6), bool(res.converged)
      (True, True)
    """
    if not isinstance(target, Target):
        raise ValueError(
            f"target must be a jaxfeat.Target, got {type(target).__name__}; "
            "wrap arrays with jaxfeat.Target(t, probs) or use fit_batch."
        )
    k = _validate.positive_int(k, "k")
    slots = k if k_max is None else k_max
    knots = None
    if init_knots is not None:
        if np.shape(init_knots) != (k,):
            raise ValueError(
                f"init_knots must have shape (k,) = ({k},), got {np.shape(init_knots)}."
            )
        knots = (
            jnp.full((1, slots), jnp.nan, target.probs.dtype)
            .at[0, :k]
            .set(jnp.asarray(init_knots, target.probs.dtype))
        )
    res = fit_batch(
        target.t,
        target.probs[None],
        k,
        activation=activation,
        restarts=restarts,
        max_steps=max_steps,
        key=key,
        optimizer=optimizer,
        k_max=k_max,
        init_knots=knots,
    )
    return res.take(0, k)


def _key(key: int | jax.Array) -> jax.Array:
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(key) if key.shape == (2,) else jax.random.key(key)
    return key


def fit_ks(target: Target, ks: Sequence[int], **kwargs: Any) -> list[FitResult]:
    """Fits every k in ``ks`` to one target in a single compiled call (one kernel, masked slots).

    Example:
      >>> import jaxfeat
      >>> out = fit_ks(jaxfeat.targets.temperature(nonmonotone=True), [1, 2], restarts=4)
      >>> out[1].mean_kl < out[0].mean_kl
      Array(True, dtype=bool)
    """
    ks = [_validate.positive_int(k, "k") for k in ks]
    if not ks:
        raise ValueError("ks is empty; give at least one feature count.")
    B = len(ks)
    probs = jnp.broadcast_to(target.probs, (B, *target.probs.shape))
    res = fit_batch(target.t, probs, np.asarray(ks), **kwargs)
    return [res.take(i, k) for i, k in enumerate(ks)]


def _trim(params: Features, k: int) -> Features:
    return Features(params.c, params.l[:k], params.w[:k], params.b[:k], params.theta[:k])
