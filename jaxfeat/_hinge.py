"""The fitting engine's internal parametrisation: k hinges in the normalised latent.

Each feature is a hinge in ``u = (t - t_1) / (t_T - t_1)``: ``a_i(u) = relu(s_i (u - tau_i))``
with a fixed direction ``s_i = +-1`` chosen per restart and a knot ``tau_i`` in the grid (JumpReLU
adds a jump height ``h_i``; softplus a log-sharpness). For fixed knots the mean KL is convex in
``W = (c, l)``; :func:`to_features` maps the hinges exactly onto :class:`jaxfeat.Features`.

This module holds one restart's state (:class:`Member`), its loss and its initialisation at
curvature-equidistributed knots. The optimisers that move it are in :mod:`jaxfeat._solver`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._model import Features, clipped_log_probs


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """The fitting engine's constants, named, with the reason for each value.

    The defaults are what the tests and ``benchmarks/throughput.py`` were measured with; change
    them to study the engine, not to make a fit pass. Hashable, so it is a static argument of the
    compiled kernel.

    Attributes:
      convex_steps: steps of each convex (c, l) phase at fixed knots; the convex problem is
        well conditioned after the ridge start, and a dozen damped Newton steps reach ~1e-6.
      damping: initial Levenberg-Marquardt damping, relative to the Gauss-Newton diagonal; small,
        since the Gauss-Newton model of a softmax loss is good near the ridge start.
      damping_down: factor by which damping shrinks after an accepted step.
      damping_up: factor by which it grows after a rejected one (> ``damping_down``, so a run of
        rejections escapes quickly).
      damping_min: floor of the damping (below it steps are pure Gauss-Newton anyway).
      damping_max: ceiling, reached only by members whose loss cannot decrease any more.
      window: steps over which a stall is measured; a member has converged when its loss fell by
        less than ``ftol * loss + atol`` over the last ``window`` steps.
      ftol32: relative stall tolerance in float32 (about 100 ulps of a loss).
      atol32: absolute stall tolerance in float32, nats (exact fits stop at rounding level).
      ftol64: relative stall tolerance in float64.
      atol64: absolute stall tolerance in float64, nats.
      knot_jitter: once every direction pattern has been tried, later restarts move their knot
        quantiles by up to this fraction of a knot spacing, so repeats are not copies.
      ridge: ridge of the least-squares start, relative to the mean diagonal of its normal matrix
        (keeps the solve defined when features overlap on the grid).
      start_log_depth: nats below a row's maximum where the start's log-probabilities are
        clipped; shallower than :data:`jaxfeat._model.LOG_DEPTH` because least squares weighs a
        clipped token as much as a likely one, and near-absent tokens should not steer the start.
      lm_max_params: dense Gauss-Newton costs O(P^3) per step with P = (k + 1) V + k_enc
        parameters; past this size the same damped steps are solved matrix-free by conjugate
        gradients, O(T (k + 1) V) per product (``benchmarks/throughput.py``, ``large_vocab``).
      cg_steps: most conjugate-gradient iterations per matrix-free step; the block-diagonal
        preconditioner (one (k + 1)-square block per token) keeps the count flat in V.
      cg_rtol: relative residual (in the preconditioned norm) at which an inner solve stops. An
        inexact step is still a descent step: on ``random_smooth(0, 3, 1000, n=64)`` at k = 19,
        10 iterations to 1e-2 ended 0.07% above 40 to 1e-3, in 35% of the time.
      cpu_lane_bytes: on CPU a step is bound by memory traffic: lanes whose (lanes, T, (k + 1) V)
        intermediates fit in cache make a step ~2.5x cheaper per member than one vmap over the
        whole batch.
      accelerator_lanes: lanes on GPU or TPU, where wide vmaps pay: as many as there are members,
        up to this cap on memory.
      chunk_bytes: memory budget per device of one chunk of a large :func:`jaxfeat.fit_batch` on
        CPU (on GPU and TPU a quarter of the device's memory): a batch past it streams through
        in equal chunks, so memory stays flat in the batch size.

    Example:
      >>> import jaxfeat
      >>> s = jaxfeat.SolverSettings(convex_steps=20)
      >>> s.convex_steps, s.window
      (20, 5)
    """

    convex_steps: int = 12
    damping: float = 1e-3
    damping_down: float = 3.0
    damping_up: float = 4.0
    damping_min: float = 1e-7
    damping_max: float = 1e10
    window: int = 5
    ftol32: float = 1e-5
    atol32: float = 1e-9
    ftol64: float = 1e-8
    atol64: float = 1e-15
    knot_jitter: float = 0.3
    ridge: float = 1e-6
    start_log_depth: float = 20.0
    lm_max_params: int = 600
    cg_steps: int = 10
    cg_rtol: float = 1e-2
    cpu_lane_bytes: int = 2**21
    accelerator_lanes: int = 2**16
    chunk_bytes: int = 2**30


class Grid(NamedTuple):
    """What every member of one fit shares: the normalised grid and the encoder."""

    u: jax.Array  # (T,) latent rescaled to [0, 1]
    eps: jax.Array  # grid spacing: width of the JumpReLU straight-through window
    activation: str


class Member(NamedTuple):
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
    phase: jax.Array  # LM: 0 convex, 1 joint, 2 convex, 3 joint, 4 done
    jumps_early: jax.Array  # JumpReLU: jump heights free from the first joint phase on


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


def acts(g: Grid, tau, e, s):
    """(k, T) activations of the k hinges on the grid."""
    x = s[:, None] * (g.u - tau[:, None])
    if g.activation == "relu":
        return jax.nn.relu(x)
    if g.activation == "jumprelu":
        return _step(x, g.eps) * (e[:, None] + x)
    kappa = jnp.exp(e)[:, None]
    return jax.nn.softplus(kappa * x) / kappa


def log_softmax_q(W, a):
    """(V, T) model log-probabilities from the (k, T) activations."""
    z = W[0][:, None] + W[1:].T @ a
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=0, keepdims=True))
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=0))


def loss_terms(g: Grid, W, tau, e, s, mask, p):
    """(T,) pointwise KL(p(t) || q(t)) for the (T, V) target p."""
    a = acts(g, tau, e, s) * mask[:, None]
    pT = p.T
    positive = pT > 0  # as in jaxfeat.kl: 0 log 0 = 0, and log p is never evaluated at 0
    log_p = jnp.log(jnp.where(positive, pT, 1.0))
    return jnp.sum(jnp.where(positive, pT * (log_p - log_softmax_q(W, a)), 0.0), axis=0)


def mean_loss(g: Grid, W, tau, e, s, mask, p):
    return jnp.mean(loss_terms(g, W, tau, e, s, mask, p))


def knot_box(u, s):
    """Knot box that keeps every feature active on at least one grid point."""
    lo = jnp.where(s > 0, u[0], u[1])
    hi = jnp.where(s > 0, u[-2], u[-1])
    return lo, hi


def project(g: Grid, tau, e, s):
    """Clips knots into their box and encoder parameters into their ranges."""
    lo, hi = knot_box(g.u, s)
    tau = jnp.clip(tau, lo, hi)
    if g.activation == "jumprelu":
        e = jnp.maximum(e, 0.0)
    elif g.activation == "softplus":
        e = jnp.clip(e, 0.0, 8.0)
    return tau, e


def enc_count(activation: str) -> int:
    """Encoder parameters per feature besides the logit vector."""
    return 1 if activation == "relu" else 2


def to_features(m: Member, t0, span, activation: str) -> Features:
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


def spd_solve(H, g):
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

    _, L = jax.lax.fori_loop(0, n, factor, (H, jnp.zeros_like(H)))
    y = jax.lax.fori_loop(
        0, n, lambda j, y: y.at[j].set((g[j] - L[j] @ y) / L[j, j]), jnp.zeros_like(g)
    )

    def back(i, x):
        j = n - 1 - i
        return x.at[j].set((y[j] - L[:, j] @ x) / L[j, j])

    return jax.lax.fori_loop(0, n, back, jnp.zeros_like(g))


# ---------------------------------------------------------------------------------------------
# Initialisation


def knot_density(u, p):
    """Curvature density g^(1/5), g = Var_p(z''), the optimal free-knot density for mean KL.

    The same density as :func:`jaxfeat.predicted_features` integrates; here it only
    places knots, so a floor of 5% of its mean keeps flat stretches from getting none.
    """
    z = clipped_log_probs(p)
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
    dens = knot_density(u, p)
    cum = jnp.concatenate(
        [jnp.zeros(1, u.dtype), jnp.cumsum((dens[1:] + dens[:-1]) / 2 * jnp.diff(u))]
    )
    cum = cum / cum[-1]
    return jnp.interp(levels, cum, u)


def init_member(
    g: Grid,
    key,
    r,
    k_used,
    k_max: int,
    n_restarts: int,
    p,
    init_knots,
    init_dirs,
    cfg: SolverSettings,
) -> Member:
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
    u = g.u
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
    jit = cfg.knot_jitter
    jitter = jnp.where(repeat, jax.random.uniform(k1, (k_max,), dtype, -jit, jit), 0.0)
    levels = jnp.clip((jj + 1 + jitter) / (n_int + 1), 0.0, 1.0)
    tau = _quantile_knots(u, p, levels)
    lin = lead & (j == 0)
    tau = jnp.where(lin, jnp.where(s > 0, u[0], u[-1]), tau)
    if init_knots is not None:
        given = jnp.isfinite(init_knots)
        tau = jnp.where((r == 0) & given, init_knots, tau)
        s = jnp.where((r == 0) & given, init_dirs, s)
    lo, hi = knot_box(u, s)
    tau = jnp.clip(tau, lo, hi)
    mask = active.astype(dtype)
    if g.activation == "jumprelu":
        # Half the restarts start with visible jumps, half grow them from a ReLU fit (see
        # jaxfeat._solver.lm_step).
        e = jnp.where(r % 4 >= 2, 0.5, 0.0) * jnp.ones(k_max, dtype)
    elif g.activation == "softplus":
        e = jnp.full(k_max, jnp.log(30.0), dtype)  # sharpness 30: close to a hinge at the start
    else:
        e = jnp.zeros(k_max, dtype)
    # Least squares on clipped log-probabilities: a cheap start for the convex (c, l) solve.
    a = acts(g, tau, e, s).T * mask
    X = jnp.concatenate([jnp.ones((u.shape[0], 1), dtype), a], axis=1)
    z = clipped_log_probs(p, cfg.start_log_depth)
    z = z - z.mean(axis=1, keepdims=True)
    A = X.T @ X
    ridge = cfg.ridge * jnp.trace(A) / (k_max + 1) * jnp.eye(k_max + 1, dtype=dtype)
    # Plain jnp ops keep LAPACK out of sharded CPU runs (see spd_solve).
    W = spd_solve(A + ridge, X.T @ z)
    # Knots closer than a grid cell make features coincide: the ridge system is then singular to
    # float32 rounding and a Cholesky pivot can turn negative (NaN). Such a restart starts from
    # the fit without features instead of carrying NaN to the end.
    W = jnp.where(jnp.all(jnp.isfinite(W)), W, jnp.zeros_like(W).at[0].set(z.mean(axis=0)))
    W = W * jnp.concatenate([jnp.ones(1, dtype), mask])[:, None]
    return Member(
        W=W,
        tau=tau,
        e=e,
        s=s,
        mask=mask,
        loss=mean_loss(g, W, tau, e, s, mask, p),
        lam=jnp.asarray(cfg.damping, dtype),
        ref_loss=jnp.asarray(jnp.inf, dtype),
        since_ref=jnp.asarray(0),
        converged=jnp.asarray(False),
        steps=jnp.asarray(0),
        phase=jnp.asarray(0),
        jumps_early=r % 4 >= 2,
    )
