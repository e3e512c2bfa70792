"""The fitting engine's optimisers: damped Gauss-Newton in a work queue, or any optax optimiser.

Every (target, restart) pair is a :class:`~jaxfeat._hinge.Member`. Damped Gauss-Newton
(Levenberg-Marquardt) moves it with the exact generalised Gauss-Newton matrix
``J^T (diag q - q q^T) J``, assembled from its Kronecker-structured blocks (or, for large
vocabularies, applied matrix-free inside preconditioned conjugate gradients), through four phases:
a convex (c, l) solve at fixed knots, a joint stretch, a second convex solve at the knots it found
and a second joint stretch, each phase starting from fresh damping. Members run through a work
queue of vmapped lanes, each at its own pace (:func:`run_queue`). A user-given optax optimiser
runs a first-order loop on the same loss (:func:`optax_run`). :func:`fit_kernel`
is the one compiled entry point; :mod:`jaxfeat._fit` validates inputs and calls it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._arrays import bcast
from ._hinge import (
    Grid,
    Member,
    SolverSettings,
    acts,
    init_member,
    log_softmax_q,
    mean_loss,
    project,
    spd_solve,
)


class Config(NamedTuple):
    """What one compiled fit fixes: the solver's constants and the per-call step budget."""

    solver: SolverSettings
    max_steps: Any  # traced: fits that differ only in their step budget share one compilation
    ftol: float  # the solver's stall tolerances for the fit's dtype
    atol: float
    lapack: bool = True  # Cholesky through LAPACK; False: plain jnp ops (see spd_solve)

    def phase_steps(self, phase):
        """Step budget of each LM phase: short convex solves around two joint stretches."""
        c = self.solver.convex_steps
        joint = jnp.maximum(self.max_steps - 2 * c, 2)
        return jnp.array([c, joint // 2, c, joint - joint // 2, 0])[phase]


# ---------------------------------------------------------------------------------------------
# Levenberg-Marquardt step with the exact generalised Gauss-Newton matrix


class _Linearised(NamedTuple):
    """One member's Gauss-Newton model at its current point, shared by both linear solvers.

    Arrays keep the grid as the major axis (T, ...), which measured fastest for these
    contractions. ``E`` stands for the encoder parameters: the knots, then (JumpReLU, softplus)
    the jump heights or sharpnesses.
    """

    X: jax.Array  # (T, k + 1): 1 and the activations
    q: jax.Array  # (T, V) model probabilities
    D: jax.Array  # (T, nE) derivatives of the activations in E
    L: jax.Array  # (nE, V) the logit vector each E entry moves
    grad: jax.Array  # ((k + 1) V + nE,) gradient of the mean KL
    frozen: jax.Array  # ((k + 1) V + nE,) entries held fixed in this step
    diag: jax.Array  # ((k + 1) V + nE,) diagonal of the Gauss-Newton matrix


def _linearise(g: Grid, m: Member, p) -> _Linearised:
    T, V = p.shape
    k = m.tau.shape[0]

    def acts_of(tau, e):
        return acts(g, tau, e, m.s) * m.mask[:, None]

    a = acts_of(m.tau, m.e)
    q = jnp.exp(log_softmax_q(m.W, a)).T
    X = jnp.concatenate([jnp.ones((T, 1), a.dtype), a.T], axis=1)
    r = (q - p) / T
    gW = X.T @ r
    tangent = jnp.ones_like(m.tau)
    D = [jax.jvp(lambda tt: acts_of(tt, m.e), (m.tau,), (tangent,))[1]]
    if g.activation != "relu":
        D.append(jax.jvp(lambda ee: acts_of(m.tau, ee), (m.e,), (tangent,))[1])
    D = jnp.concatenate(D, axis=0).T  # (T, nE)
    L = jnp.concatenate([m.W[1:]] * (D.shape[1] // k), axis=0)  # (nE, V)
    gE = jnp.sum(D * (r @ L.T), axis=0)
    # Knots move only in the joint phases; in the others (c, l) solve a convex problem.
    free_enc = (m.phase == 1) | (m.phase == 3)
    frozen_W = jnp.concatenate([jnp.zeros(1, bool), m.mask == 0])
    frozen_enc = jnp.tile(m.mask == 0, D.shape[1] // k) | ~free_enc
    if g.activation == "jumprelu":
        # JumpReLU contains ReLU (zero jumps), but its loss is piecewise constant in where a jump
        # sits, which traps Gauss-Newton on smooth targets; so half the restarts fit a ReLU first
        # and grow jumps from that solution, the other half start with visible jumps (which
        # find real steps in the target).
        frozen_enc = frozen_enc | ((jnp.arange(2 * k) >= k) & (m.phase < 3) & ~m.jumps_early)
    frozen = jnp.concatenate([jnp.repeat(frozen_W, V), frozen_enc])
    qv = q - q * q
    dW = (X * X).T @ qv / T
    DL = D * (q @ L.T)  # (T, nE): the mean logit change, removed by the softmax
    dE = jnp.sum((D * D) * (q @ (L * L).T), axis=0) / T - jnp.sum(DL * DL, axis=0) / T
    grad = jnp.concatenate([gW.reshape(-1), gE])
    return _Linearised(X, q, D, L, grad, frozen, jnp.concatenate([dW.reshape(-1), dE]))


def _damping(lin: _Linearised, lam):
    """Levenberg-Marquardt damping ``lam * diag(H)``, floored relative to its largest entry."""
    d = lin.diag
    dmin = 1e-9 * jnp.max(d) + jnp.finfo(d.dtype).tiny
    damp = lam * jnp.maximum(d, dmin) + dmin
    return jnp.where(lin.frozen, 1.0, damp)


def _dense_solve(lin: _Linearised, lam, cfg: Config):
    """The damped step from the assembled (k + 1) V + nE Gauss-Newton matrix: O(((k+1)V)^3)."""
    X, q, D, L = lin.X, lin.q, lin.D, lin.L
    T, V = q.shape
    K1 = X.shape[1]
    # GGN block for W: sum_t (X_t X_t^T) kron (diag q_t - q_t q_t^T) / T.
    Y = X[:, :, None] * q[:, None, :]
    HW = jnp.einsum("ti,tj,tv->ivj", X, X, q) / T
    HW = (
        jnp.einsum("ivj,vw->ivjw", HW, jnp.eye(V, dtype=q.dtype))
        - jnp.einsum("tiv,tjw->ivjw", Y, Y) / T
    )
    HW = HW.reshape(K1 * V, K1 * V)
    Gl = q[:, None, :] * (L[None] - jnp.einsum("tv,jv->tj", q, L)[:, :, None])
    HWE = jnp.einsum("ti,tj,tjv->ivj", X, D, Gl).reshape(K1 * V, -1) / T
    HEE = jnp.einsum("tj,tk,tjv,kv->jk", D, D, Gl, L) / T
    H = jnp.block([[HW, HWE], [HWE.T, HEE]])
    frozen = lin.frozen
    H = jnp.where(frozen[:, None] | frozen[None, :], 0.0, H)
    H = H + jnp.diag(_damping(lin, lam))
    grad = jnp.where(frozen, 0.0, lin.grad)
    if cfg.lapack:
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H, lower=True), grad)
    return spd_solve(H, grad)


def _cg_solve(lin: _Linearised, lam, cfg: Config):
    """The damped step by preconditioned conjugate gradients, never forming the matrix.

    A Gauss-Newton product ``J^T F J v`` costs O(T (k + 1) V): the logit change ``J v`` is
    ``X dW + (D dE) L``, ``F`` is ``diag q - q q^T`` per grid point, and ``J^T`` contracts back.
    The preconditioner is block diagonal: one (k + 1)-square block per token,
    ``sum_t X_t X_t^T q_tv / T`` (the Kronecker blocks without the rank-one ``q q^T`` coupling,
    which only lowers the matrix), and the dense encoder block. Memory per member is
    O(T V + k^2 V).
    """
    X, q, D, L = lin.X, lin.q, lin.D, lin.L
    T, V = q.shape
    K1, nE = X.shape[1], D.shape[1]
    n_W = K1 * V
    live = ~lin.frozen
    damp = _damping(lin, lam)

    def split(v):
        return v[:n_W].reshape(K1, V), v[n_W:]

    def matvec(v):
        v = jnp.where(live, v, 0.0)
        vW, vE = split(v)
        dz = X @ vW + (D * vE) @ L  # (T, V)
        u = q * (dz - jnp.sum(q * dz, axis=1, keepdims=True)) / T
        out = jnp.concatenate([(X.T @ u).reshape(-1), jnp.sum(D * (u @ L.T), axis=0)])
        return jnp.where(live, out, 0.0) + damp * v

    # Preconditioner blocks, frozen entries reduced to their unit damping.
    dW, dE = split(damp)
    liveW, liveE = split(live)
    XX = (X[:, :, None] * X[:, None, :]).reshape(T, K1 * K1)
    BW = (XX.T @ q / T).reshape(K1, K1, V).transpose(2, 0, 1)  # (V, K1, K1)
    both = liveW.T[:, :, None] & liveW.T[:, None, :]
    BW = jnp.where(both, BW, 0.0) + jax.vmap(jnp.diag)(dW.T)
    # sum_t D_tj D_tk (sum_v q_tv L_jv L_kv - (q_t . L_j)(q_t . L_k)), without a (T, nE, V) array
    qL = q @ L.T
    qLL = (q @ (L[:, None, :] * L[None]).reshape(nE * nE, V).T).reshape(T, nE, nE)
    HEE = jnp.einsum("tj,tk,tjk->jk", D, D, qLL - qL[:, :, None] * qL[:, None, :]) / T
    BE = jnp.where(liveE[:, None] & liveE[None, :], HEE, 0.0) + jnp.diag(dE)
    cW = jnp.linalg.cholesky(BW)
    cE = jnp.linalg.cholesky(BE)

    def precond(v):
        vW, vE = split(v)
        yW = jax.scipy.linalg.cho_solve((cW, True), vW.T[:, :, None])[:, :, 0].T
        yE = jax.scipy.linalg.cho_solve((cE, True), vE)
        return jnp.concatenate([yW.reshape(-1), yE])

    b = jnp.where(live, lin.grad, 0.0)
    s = cfg.solver
    tol2 = (s.cg_rtol**2) * jnp.vdot(b, precond(b))

    def cond(c):
        _x, _r, _z, _d, rz, it = c
        return (it < s.cg_steps) & (rz > tol2)

    def body(c):
        x, r, z, d, rz, it = c
        Ad = matvec(d)
        alpha = rz / jnp.vdot(d, Ad)
        x = x + alpha * d
        r = r - alpha * Ad
        z = precond(r)
        rz_new = jnp.vdot(r, z)
        d = z + (rz_new / rz) * d
        return x, r, z, d, rz_new, it + 1

    z0 = precond(b)
    init = (jnp.zeros_like(b), b, z0, z0, jnp.vdot(b, z0), jnp.asarray(0))
    x = jax.lax.while_loop(cond, body, init)[0]
    return jnp.where(live, x, 0.0)


def lm_step(g: Grid, m: Member, p, cfg: Config, solve=_dense_solve) -> Member:
    """One damped Gauss-Newton step of a member, with the exact generalised Gauss-Newton matrix.

    In the convex phases (0, 2) only (c, l) move; in the joint phases (1, 3) the knots (and
    JumpReLU jump heights or softplus sharpnesses) move with them. A step that does not lower
    the loss is rejected and the damping raised. ``solve`` is :func:`_dense_solve` (Cholesky of
    the assembled matrix) or :func:`_cg_solve` (matrix-free, for large vocabularies).
    """
    K1, V = m.W.shape
    k = m.tau.shape[0]
    lin = _linearise(g, m, p)
    delta = solve(lin, m.lam, cfg)
    W = m.W - delta[: K1 * V].reshape(K1, V)
    if solve is _cg_solve:
        # Adding a constant to every token of a row of W leaves the model unchanged; centring
        # keeps that free direction from drifting (inexact steps are not orthogonal to it).
        W = W - jnp.mean(W, axis=1, keepdims=True)
    dE = delta[K1 * V :]
    tau, e = m.tau - dE[:k], m.e
    if g.activation != "relu":
        e = e - dE[k:]
    tau, e = project(g, tau, e, m.s)
    new_loss = mean_loss(g, W, tau, e, m.s, m.mask, p)
    accept = jnp.isfinite(new_loss) & (new_loss <= m.loss)
    pick = lambda new, old: jnp.where(accept, new, old)
    s = cfg.solver
    lam = jnp.where(
        accept,
        jnp.maximum(m.lam / s.damping_down, s.damping_min),
        jnp.minimum(m.lam * s.damping_up, s.damping_max),
    )
    return advance(
        m, pick(W, m.W), pick(tau, m.tau), pick(e, m.e), pick(new_loss, m.loss), lam, cfg
    )


# ---------------------------------------------------------------------------------------------
# Work queue


def advance(m: Member, W, tau, e, loss, lam, cfg: Config) -> Member:
    """Shared bookkeeping: stall-based convergence over a window, and freezing converged members."""
    since = m.since_ref + 1
    check = since >= cfg.solver.window
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
    return where(m.converged, m, new)


def reset_progress(m: Member, cfg: Config) -> Member:
    return m._replace(
        lam=jnp.full_like(m.lam, cfg.solver.damping),
        ref_loss=jnp.full_like(m.loss, jnp.inf),
        since_ref=jnp.zeros_like(m.since_ref),
        converged=jnp.zeros_like(m.converged),
    )


def run_queue(members: Member, step_fn, p, lanes: int, restarts: int, cfg: Config) -> Member:
    """Runs the (n,) initial ``members`` (member i = restart i % R of target i // R) through
    ``lanes`` vmapped slots of one loop; each member goes through its LM phases at its own pace.

    A member leaves a phase when it has converged or used the phase's step budget, and starts the
    next with fresh damping; after phase 3 it is done (phase 4), its slot stores it
    and takes the next task. Members need from a few dozen to ``max_steps`` steps, so a slot per
    member for the whole run would spend most steps on members already done.

    ``step_fn(members, p)`` acts on (lanes,) batches; ``p`` holds
    each target's probabilities. Returns the (n,) final members.
    """
    S = lanes
    n_tasks = members.loss.shape[0]
    target_of = lambda task: jnp.minimum(task, n_tasks - 1) // restarts

    def advance_phase(m, entered):
        nxt = jnp.where(
            m.converged | (m.steps - entered >= cfg.phase_steps(m.phase)), m.phase + 1, m.phase
        )
        nxt = jnp.minimum(nxt, 4)
        moved = nxt != m.phase
        m2 = where(
            moved & (nxt < 4), reset_progress(m._replace(phase=nxt), cfg), m._replace(phase=nxt)
        )
        return m2, jnp.where(moved, m.steps, entered)

    def cond(c):
        return jnp.any(c[0].phase < 4)

    def body(c):
        ms, entered, task, next_task, results = c
        pp = p[target_of(task)]
        active = ms.phase < 4
        ms = where(active, step_fn(ms, pp), ms)
        ms, entered = advance_phase(ms, entered)
        finished = active & (ms.phase == 4)
        # Finished members are written to their task's row; index n_tasks drops the write.
        row = jnp.where(finished, task, n_tasks)
        results = jax.tree.map(lambda r, x: r.at[row].set(x, mode="drop"), results, ms)
        new_task = next_task + jnp.cumsum(finished) - 1
        take = finished & (new_task < n_tasks)
        task = jnp.where(finished, jnp.where(take, new_task, n_tasks), task)
        fresh = jax.tree.map(lambda r: r[jnp.minimum(task, n_tasks - 1)], results)
        ms = where(take, fresh, ms)
        entered = jnp.where(take, 0, entered)
        return ms, entered, task, jnp.minimum(next_task + jnp.sum(finished), n_tasks), results

    # ``results`` starts as the queue of initial members; a slot reads its member from its row
    # and writes it back when done.
    task = jnp.arange(S)
    state = (
        jax.tree.map(lambda r: r[:S], members),
        jnp.zeros(S, jnp.int32),
        task,
        jnp.asarray(S),
        members,
    )
    return jax.lax.while_loop(cond, body, state)[-1]


def where(flag, a, b):
    """Per-member select between two batched pytrees."""
    return jax.tree.map(lambda x, y: jnp.where(bcast(flag, x), x, y), a, b)


# ---------------------------------------------------------------------------------------------
# First-order path (any optax optimiser)


def optax_run(g: Grid, members: Member, p, cfg: Config, opt, n_steps: int) -> Member:
    """Runs every (target, restart) member for up to ``n_steps`` steps of an optax optimiser.

    ``members`` and ``p`` carry a target axis and a restart axis; members stop on the same stall
    rule as the Gauss-Newton path and keep their last finite iterate.
    """
    opt = optax.with_extra_args_support(opt)

    def one(m: Member, p):
        def loss_fn(x):
            W, tau, e = x
            tau, e = project(g, tau, e, m.s)
            W = W * jnp.concatenate([jnp.ones(1), m.mask])[:, None]
            return mean_loss(g, W, tau, e, m.s, m.mask, p)

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
            tau, e = project(g, tau, e, m.s)
            W = W * jnp.concatenate([jnp.ones(1), m.mask])[:, None]
            new_loss = fn((W, tau, e))
            ok = jnp.isfinite(new_loss)
            new = advance(
                m,
                jnp.where(ok, W, m.W),
                jnp.where(ok, tau, m.tau),
                jnp.where(ok, e, m.e),
                jnp.where(ok, new_loss, m.loss),
                m.lam,
                cfg,
            )
            s2 = where(m.converged, s, s2)
            return new, s2

        return _vm(upd)(ms, st, p)

    start = members.steps

    def cond(c):
        ms = c[0]
        return jnp.any(~ms.converged & (ms.steps - start < n_steps))

    def body(c):
        new = step(c)
        done = c[0].steps - start >= n_steps
        return where(done, c, new)

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
# The compiled kernel


def lanes_for(
    n_members: int, T: int, V: int, k_max: int, itemsize: int, platform: str, solver: SolverSettings
) -> int:
    """Work-queue slots of the Gauss-Newton loop on one device (see :class:`SolverSettings`)."""
    if platform != "cpu":
        return max(1, min(n_members, solver.accelerator_lanes))
    per_member = T * (k_max + 1) * V * itemsize
    return int(np.clip(solver.cpu_lane_bytes // per_member, 1, max(n_members, 1)))


@functools.partial(
    jax.jit,
    static_argnames=(
        "k_max",
        "restarts",
        "activation",
        "optimizer",
        "method",
        "lanes",
        "solver",
        "devices",
    ),
)
def fit_kernel(
    t,
    p,
    k_used,
    keys,
    init_knots,
    init_dirs,
    *,
    k_max: int,
    restarts: int,
    activation: str,
    max_steps: int | jax.Array,
    optimizer,
    method: str,
    lanes: int,
    solver: SolverSettings,
    devices: tuple = (),
):
    """Fits every (target, restart) member; returns the (B, restarts) final members.

    Args:
      t: (T,) grid.
      p: (B, T, V) targets.
      k_used: (B,) features in use per target (of ``k_max`` slots).
      keys: (B,) PRNG keys.
      init_knots: (B, k_max) knots for restart 0 in units of t, NaN where free.
      init_dirs: (B, k_max) directions (+1 or -1) of the features whose knots are given.
      k_max, restarts, activation, max_steps: as in :func:`jaxfeat.fit_batch`.
      optimizer: an ``optax.GradientTransformation`` (used when ``method`` is ``"optax"``).
      method: ``"dense"`` or ``"cg"``: damped Gauss-Newton through the work queue of ``lanes``
        vmapped slots, with the assembled matrix or matrix-free conjugate gradients;
        ``"optax"``: ``optimizer``, vmapped over every member.
      lanes: work-queue slots per device.
      solver: the engine's constants.
      devices: with more than one device, the target axis (B a multiple of their number) is split
        over them with ``jax.shard_map``.
    """
    dtype = p.dtype
    f32 = dtype == jnp.float32
    cfg = Config(
        solver=solver,
        max_steps=jnp.asarray(max_steps, jnp.int32),
        ftol=solver.ftol32 if f32 else solver.ftol64,
        atol=solver.atol32 if f32 else solver.atol64,
        lapack=len(devices) <= 1 or jax.default_backend() != "cpu",
    )
    u = (t - t[0]) / (t[-1] - t[0])
    init_knots = (init_knots - t[0]) / (t[-1] - t[0])
    g = Grid(u, jnp.asarray(1.0 / (u.shape[0] - 1), dtype), activation)
    R = restarts

    def init_target(key, k_u, p, knots, dirs):
        ks = jax.random.split(key, R)
        return jax.vmap(lambda kk, r: init_member(g, kk, r, k_u, k_max, R, p, knots, dirs, solver))(
            ks, jnp.arange(R)
        )

    def local(p, k_used, keys, knots, dirs):
        B = p.shape[0]
        members = jax.vmap(init_target)(keys, k_used, p, knots, dirs)
        if method == "optax":
            return optax_run(g, reset_progress(members, cfg), p, cfg, optimizer, max_steps)
        members = jax.tree.map(lambda x: x.reshape((B * R, *x.shape[2:])), members)
        solve = _cg_solve if method == "cg" else _dense_solve
        step = jax.vmap(lambda m, pp: lm_step(g, m, pp, cfg, solve))
        out = run_queue(members, step, p, min(lanes, B * R), R, cfg)
        return jax.tree.map(lambda x: x.reshape((B, R, *x.shape[1:])), out)

    if len(devices) <= 1:
        return local(p, k_used, keys, init_knots, init_dirs)
    # Targets are independent: each device runs its share with no communication (so there is
    # nothing for shard_map's replication checks to verify).
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    spec = jax.sharding.PartitionSpec("batch")
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(
        p, k_used, keys, init_knots, init_dirs
    )
