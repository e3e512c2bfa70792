r"""Certified lower bounds on the number of features a curve needs.

Every function here returns a frozen dataclass whose ``lower_bound`` is a number of features that
is *proved* necessary: no model with fewer ReLU (or JumpReLU) features of an affine latent reaches
the stated accuracy. Two accuracy measures, one name each:

* ``tol``: mean over the grid of ``KL(p(t) || q(t))``, in nats (the fitting loss):
  :func:`segmentation_lower_bound`.
* ``delta``: sup-norm log-ratio error,
  :math:`\max_t \max_{j,m} |\log(q_j/q_m) - \log(p_j/p_m)|` over the tokens with full support,
  in nats: :func:`turning_point_lower_bound`, :func:`piece_count_lower_bound`.

A model with k such features has logits that are affine in t on at most k + 1 contiguous blocks
of grid points, and each log-ratio has at most :func:`jaxfeat.theory.max_turning_points` (k)
turning points; the bounds turn those facts into certificates. The segmentation bound's block
costs are convex softmax regressions solved by Newton's method in float64 and certified from
below by a dual feasible point (entropy of distributions whose moments match the target's), so it
stays a bound, up to floating-point rounding, whatever the solver's accuracy. The sup-norm bounds
compare log-ratio increments with ``2 delta`` plus a margin of a few hundred float64 ulps.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _logratio, _validate
from ._arrays import bcast, pow2, x64
from ._target import Target
from .theory import max_turning_points

# By default the work is capped at about that of a grid of this many points and 3 tokens: block
# costs take O(T^3 V^2) work, so longer grids or larger vocabularies are split into interleaved
# sub-grids, whose summed bounds are still valid (and only slightly weaker).
AUTO_SUBGRID = 512
# Past this vocabulary the default bound splits the tokens into buckets of AUTO_BUCKET_SIZE (see
# segmentation_lower_bound), so that its cost grows linearly in V, not as V^2. Every
# AUTO_BUCKETS_PER_BUDGET buckets get the work budget of AUTO_SUBGRID points: a grid is split
# into sub-grids only as far as needed to keep the work linear in V. (Dropping tokens would cap
# the cost, but a curve whose tokens each matter somewhere, like tuning curves, then loses its
# bound.)
AUTO_BUCKET_VOCAB = 32
AUTO_BUCKET_SIZE = 32
AUTO_BUCKETS_PER_BUDGET = 8

# Largest (grid points^2 x tokens) for which the plain bound keeps every block's solution, to
# give the knots of its partitions directions (64 MiB of float64 at most).
_KEEP_SOLUTIONS = 1 << 22

# Per grid point of a block, in nats: covers float64 rounding in the certificate (sums of at most a
# few thousand terms of size <= ~100, each exact to ~1e-16 relative) with a wide margin.
_ROUNDING = 1e-12

_MAX_NEWTON = 50
# Newton stops when the squared decrement (twice the predicted decrease) is below this per point
# of the block: the certificate then loses about that much, far below any useful tolerance.
_NEWTON_TOL = 1e-12
# Points x max(V, 8) per compiled chunk of blocks: bounds memory (and the work a chunk's slowest
# block imposes on the rest), not results.
_CHUNK_SIZE = 1 << 18
# The Newton system is solved by the Woodbury identity where its (P + 2)-square capacitance is at
# most this fraction of the 2V-square Hessian. Measured per block (512 blocks, 8 steps, 2-core
# CPU), direct against Woodbury: V = 16, P = 8: 133 / 64 us; V = 16, P = 16: 152 / 120 us;
# V = 32, P = 16: 671 / 184 us; V = 32, P = 32: 686 / 487 us.
_LOW_RANK_RATIO = 0.6

# ---------------------------------------------------------------------------------------------
# Block costs: softmax regression with soft labels on [1, t], certified from below


def _low_rank_step(M1, q, omega, x, u, pres, g):
    """The Newton step ``-Hr^-1 g`` of :func:`_block_kernel` by the Woodbury identity.

    The Hessian is ``D - U U^T``: ``D`` holds one 2x2 block per token (the moments of its
    probability), and ``U`` has one column per grid point, ``sqrt(omega_t) [1, x_t] (x) q_t``.
    With the two gauge directions it is ``D + W S W^T`` with ``W`` of P + 2 columns, so each step
    solves a (P + 2)-square system instead of a 2V-square one. One step of iterative refinement
    (products with the Hessian cost O(V P)) brings the residual to that of a direct solve, which
    the certificate needs: its dual point is feasible exactly when the step solves the system.

    Shapes: M1 (n, 3, V), q (n, V, P), omega and x (n, 1, P), u and pres (n, V), g (n, 2, V);
    returns (n, 2, V).
    """
    _, V, P = q.shape
    sw = jnp.sqrt(omega)
    U = jnp.stack([sw * q, sw * x * q], axis=1)  # (n, 2, V, P)
    trace = jnp.sum(M1[:, 0] + M1[:, 2], -1) - jnp.sum(U * U, axis=(1, 2, 3))
    scale = trace / (2 * V) + 1e-300  # (n,)
    ridge = scale[:, None] * (1e-13 + 1.0 - pres)  # absent tokens: a unit diagonal, as in Hr
    d00, d01, d11 = M1[:, 0] + ridge, M1[:, 1], M1[:, 2] + ridge  # (n, V)
    det = d00 * d11 - d01 * d01

    def d_solve(y):  # D^-1 y for y (n, 2, V, ...)
        e = (slice(None), slice(None)) + (None,) * (y.ndim - 3)
        a, b, c, dt = d00[e], d01[e], d11[e], det[e]
        return jnp.stack([(c * y[:, 0] - b * y[:, 1]) / dt, (a * y[:, 1] - b * y[:, 0]) / dt], 1)

    root = jnp.sqrt(scale)[:, None] * u  # (n, V)
    zero = jnp.zeros_like(root)
    G = jnp.stack([jnp.stack([root, zero], 1), jnp.stack([zero, root], 1)], axis=-1)
    W = jnp.concatenate([U, G], axis=-1)  # (n, 2, V, P + 2)
    sign = jnp.concatenate([-jnp.ones(P, q.dtype), jnp.ones(2, q.dtype)])
    DW = d_solve(W)
    C = jnp.diag(sign) + jnp.einsum("navi,navj->nij", W, DW)

    def solve(r):  # Hr^-1 r
        y = d_solve(r)
        c = jnp.linalg.solve(C, jnp.einsum("navi,nav->ni", W, y)[..., None])[..., 0]
        return y - jnp.einsum("navi,ni->nav", DW, c)

    def apply(s):  # Hr s
        ds = jnp.stack([d00 * s[:, 0] + d01 * s[:, 1], d01 * s[:, 0] + d11 * s[:, 1]], 1)
        return ds + jnp.einsum("navi,ni->nav", W, sign * jnp.einsum("navi,nav->ni", W, s))

    s = solve(g)
    s = s + solve(g - apply(s))
    return -s


@functools.partial(jax.jit, static_argnames=("max_iter", "low_rank"))
def _block_kernel(x, p, mask, theta_init, warm, lin, max_iter: int, low_rank: bool | None = None):
    """Damped Newton for n padded blocks, certified from below by a dual feasible point.

    Minimises ``sum_t KL(p_t || softmax(alpha + beta x_t)) + lin . (alpha, beta)``; the linear
    term carries the Lagrange multipliers of :func:`continuity_lower_bound` (zero for the plain
    block costs). It must sum to zero over tokens, or the minimum is unbounded.

    Args:
      x: (n, P) latent rescaled to [-1, 1] within each block.
      p: (n, V, P) target probabilities (rows summing to 1); the grid axis is last so that every
        per-point operation runs over contiguous memory.
      mask: (n, P) which of the P slots hold the block's points.
      theta_init: (n, 2, V) starting (alpha, beta) in the block's own coordinates, used where
        ``warm`` is set (else least squares on log-probabilities).
      warm: (n,) bool.
      lin: (n, 2, V) linear coefficients of (alpha, beta), in the block's coordinates.
      max_iter: Newton step limit.
      low_rank: solve each Newton system by :func:`_low_rank_step` (True) or directly (False);
        ``None`` picks the cheaper for the shapes (the two agree to rounding).

    Returns:
      ``(primal, dual, theta, iters)``: the objective at the solver's point, the certified lower
      bound (0 if the certificate failed), the final (alpha, beta), and the number of iterations.
    """
    n, V, P = p.shape
    dtype = p.dtype
    # The Woodbury step is cheaper once the grid slots are well below twice the vocabulary.
    if low_rank is None:
        low_rank = P + 2 <= _LOW_RANK_RATIO * 2 * V
    m = mask.astype(dtype)[:, None, :]  # (n, 1, P)
    p = p * m
    x = x[:, None, :] * m
    # A token present at only the first (or only the last) point of a block has its optimum at
    # infinity: its logit slope runs off so that it matches p there and vanishes elsewhere. The
    # limit is the same problem without that token, the end point weighted by the mass left, so
    # solve that one (finite, and exactly certifiable) instead.
    pos = p > 0
    count = jnp.sum(pos, axis=-1)
    at = jnp.argmax(pos, axis=-1)
    last = jnp.sum(mask, axis=-1)[:, None] - 1
    drop = (count == 1) & ((at == 0) | (at == last))
    p = jnp.where(drop[..., None], 0.0, p)
    pos = p > 0
    omega = jnp.sum(p, axis=1, keepdims=True)  # (n, 1, P) point weights, 1 but at block ends
    pn = p / jnp.where(omega > 0, omega, 1.0)  # rows back on the simplex
    w = jnp.concatenate([omega, omega * x, omega * x * x], axis=1)  # weights for 1, x, x^2
    plogp = jnp.sum(jnp.where(pos, p * jnp.log(jnp.where(pos, pn, 1.0)), 0.0), axis=(-2, -1))
    px = jnp.stack([jnp.sum(p, axis=-1), jnp.sum(p * x, axis=-1)], axis=1)  # (n, 2, V)
    npts = jnp.sum(omega, axis=(-2, -1))
    # Tokens absent from the whole block get logit -inf: the infimum sends them there anyway, and
    # fixing them keeps the certificate exact (their dual entries are exactly 0).
    present = jnp.any(pos, axis=-1)  # (n, V)
    # A token bucket with no mass in the block costs 0; treating its tokens as present keeps the
    # arithmetic finite (every weight is 0, so the step and the certificate are exactly 0).
    present = present | ~jnp.any(present, axis=-1, keepdims=True)
    pres = present.astype(dtype)
    # That reduction (and the infimum at -inf of an absent token) is exact only where the linear
    # term leaves the token alone: elsewhere the block gets no certificate.
    lin_on = jnp.any(lin != 0, axis=1)  # (n, V)
    uncertifiable = jnp.any(lin_on & (drop | ~jnp.any(pos, axis=-1)), axis=-1)
    # A linear term must not move the constant shift of every logit (else unbounded below).
    lin_size = jnp.sum(jnp.abs(lin), axis=(1, 2)) + 1e-300
    shift = jnp.max(jnp.abs(jnp.sum(lin, axis=-1)), axis=-1)
    uncertifiable = uncertifiable | (shift > 1e-9 * lin_size)

    def logits(theta):
        return theta[:, 0, :, None] + x * theta[:, 1, :, None]  # (n, V, P)

    # Cold start: least squares on clipped, centred log-probabilities.
    z0 = jnp.log(jnp.maximum(p, 1e-30))
    z0 = jnp.maximum(z0, jnp.max(z0, axis=1, keepdims=True) - 30.0)
    z0 = (z0 - jnp.mean(z0, axis=1, keepdims=True)) * m
    s0, s1, s2 = (jnp.sum(m * x**k, axis=-1) for k in range(3))
    b0, b1 = jnp.sum(z0, axis=-1), jnp.sum(z0 * x, axis=-1)  # (n, V)
    det = s0 * s2 - s1 * s1 + 1e-12
    theta0 = jnp.stack([(s2 * b0 - s1 * b1) / det, (s0 * b1 - s1 * b0) / det], axis=1)
    theta0 = jnp.where(warm[:, None, None] & jnp.isfinite(theta_init), theta_init, theta0)

    # Softmax is unchanged by adding a constant to every present token's alpha (or beta): the
    # Hessian is singular along those two directions, and the gradient is orthogonal to them.
    # Adding a projector onto them makes the system definite without changing the Newton step.
    u = pres / jnp.sqrt(jnp.sum(pres, axis=-1, keepdims=True))
    gauge = jnp.eye(2, dtype=dtype)[None, :, None, :, None] * (
        u[:, None, :, None, None] * u[:, None, None, None, :]
    )
    gauge = gauge.reshape(n, 2 * V, 2 * V) + jnp.eye(2 * V, dtype=dtype) * 1e-13
    # Absent tokens' rows of the Hessian are zero; a unit diagonal there gives them a zero step.
    gauge = gauge + jax.vmap(jnp.diag)(jnp.tile(1.0 - pres, (1, 2)))
    eye_v = jnp.eye(V, dtype=dtype)
    ab = np.array([[0, 1], [1, 2]])  # moment index of Hessian block (a, b): x^(a + b)

    def newton(theta):
        z = jnp.where(present[..., None], logits(theta), -jnp.inf)
        zmax = jnp.max(z, axis=1, keepdims=True)
        e = jnp.exp(z - zmax)
        s = jnp.sum(e, axis=1, keepdims=True)
        q = e / s
        lse = (jnp.log(s) + zmax)[:, 0]
        f = plogp + jnp.sum(omega[:, 0] * lse, axis=-1) + jnp.sum((lin - px) * theta, (-2, -1))
        M1 = jnp.sum(w[:, :, None, :] * q[:, None], axis=-1)  # (n, 3, V)
        g = (M1[:, :2] - px + lin).reshape(n, 2 * V)
        if low_rank:
            step = _low_rank_step(M1, q, omega, x, u, pres, g.reshape(n, 2, V))
            step = step.reshape(n, 2 * V)
        else:
            if V <= 8:  # fused elementwise products are fastest for a small vocabulary
                M2 = jnp.sum(
                    w[:, :, None, None, :] * (q[:, None, :, None] * q[:, None, None, :]), -1
                )
            else:  # a batched matrix product, which never forms the (n, 3, V, V, P) products
                M2 = jnp.einsum("nkvp,nwp->nkvw", w[:, :, None, :] * q[:, None], q)
            H = M1[:, ab][..., :, None] * eye_v - M2[:, ab]  # (n, 2, 2, V, V)
            H = H.transpose(0, 1, 3, 2, 4).reshape(n, 2 * V, 2 * V)
            scale = jnp.trace(H, axis1=-2, axis2=-1)[:, None, None] / (2 * V) + 1e-300
            Hr = H + scale * gauge
            # LU, not Cholesky: batched LU is many times faster on CPU for these sizes.
            step = -jnp.linalg.solve(Hr, g[..., None])[..., 0]
        dec = -jnp.sum(g * step, axis=-1)  # Newton decrement squared
        return q, f, step.reshape(n, 2, V), dec

    def cond(state):
        return jnp.any(~state[4]) & (state[5] < max_iter)

    def body(state):
        theta, q, f, step, done, it = state
        q_new, f_new, step_new, dec = newton(theta)
        keep = lambda old, new: jnp.where(bcast(done, old), old, new)
        q, f, step = keep(q, q_new), keep(f, f_new), keep(step, step_new)
        conv = ~jnp.isfinite(dec) | (dec <= _NEWTON_TOL * npts)
        # Damped Newton: the third derivative of log-sum-exp along a logit change h is at most
        # osc(h) times the second, which guarantees a decrease for the step log(1 + r) / r with
        # r the largest oscillation of the logit step over the block; no line search needed.
        dz = logits(step_new)
        osc = jnp.max(jnp.where(present[..., None], dz, -jnp.inf), axis=1) - jnp.min(
            jnp.where(present[..., None], dz, jnp.inf), axis=1
        )
        r = jnp.max(osc * m[:, 0], axis=-1)
        eta = jnp.where(r > 1e-8, jnp.log1p(r) / jnp.maximum(r, 1e-8), 1.0)
        move = ~done & ~conv
        theta = jnp.where(move[:, None, None], theta + eta[:, None, None] * step_new, theta)
        return theta, q, f, step, done | conv, it + 1

    init = (
        theta0,
        jnp.zeros_like(p),
        jnp.zeros(n, dtype),
        jnp.zeros_like(theta0),
        jnp.zeros(n, bool),
        jnp.asarray(0),
    )
    theta, q, f, step, _, iters = jax.lax.while_loop(cond, body, init)

    # Dual certificate: for any q_t on the simplex with sum_t w_t (q_t - p_t) [1, t] + lin = 0,
    # min_theta f >= sum_t w_t (H(q_t) - H(p_t)). The softmax after a linearised Newton step,
    # q + F (z-step), satisfies the constraint exactly (up to rounding).
    dz = logits(step)
    q1 = q * (1.0 + dz - jnp.sum(q * dz, axis=1, keepdims=True)) * (omega > 0)
    # Far from convergence q1 can leave the simplex; mixing with the target keeps the constraint
    # (it is linear and the target satisfies it) and restores q1 >= 0 at the least mixing.
    neg = q1 < 0
    need = jnp.where(neg, -q1 / jnp.where(neg, pn - q1, 1.0), 0.0)
    s = jnp.clip(jnp.max(need, axis=(-2, -1)), 0.0, 1.0)[:, None, None]
    q2 = jnp.maximum((1.0 - s) * q1 + s * pn, 0.0)
    # The target satisfies the constraint only without a linear term: there, a q1 that left the
    # simplex gives no certificate.
    uncertifiable = uncertifiable | (jnp.any(lin_on, axis=-1) & (s[:, 0, 0] > 0))
    pos2 = q2 > 0
    ent = -jnp.sum(
        omega * jnp.where(pos2, q2 * jnp.log(jnp.where(pos2, q2, 1.0)), 0.0), axis=(-2, -1)
    )
    dual = ent + plogp
    # KL >= 0 bounds a plain block; with a linear term the cost may be negative.
    dual = jnp.where(jnp.isfinite(dual), dual, jnp.where(jnp.any(lin_on, -1), -jnp.inf, 0.0))
    dual = jnp.where(uncertifiable, -jnp.inf, dual)
    return f, dual, theta, iters


def _block_costs(
    t: np.ndarray, p: np.ndarray, solutions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Certified lower bounds and solver values for every block of contiguous grid points.

    Args:
      t: (T,) increasing grid.
      p: (T, n_b, b) target probabilities split into n_b token buckets of b tokens (zero-padded),
        every row of the (T, n_b * b) array summing to 1. A block's cost is the sum over buckets
        of ``sum_t p_t(bucket) KL(p_t(.|bucket) || softmax(alpha + beta t))`` (the chain rule of
        KL; one bucket is the block's whole softmax regression).

    Returns:
      ``(lower, primal)``, both (T, T): entry [i, j] is for block i..j (inclusive), ``inf`` for
      i > j. ``lower`` <= true block minimum <= ``primal`` (blocks of 1 or 2 points are exactly 0).
      With ``solutions``, a (T, T, n_b, 2, V) array, each solved block's (alpha, beta) in units
      of t is written to ``solutions[i, j]``.
    """
    t = np.asarray(t, np.float64)
    p = np.asarray(p, np.float64)
    T, nb, V = p.shape
    lower = np.full((T, T), np.inf)
    primal = np.full((T, T), np.inf)
    ii = np.arange(T)
    for L in (1, 2):  # two distributions are interpolated exactly by alpha + beta t
        lower[ii[: T - L + 1], ii[: T - L + 1] + L - 1] = 0.0
        primal[ii[: T - L + 1], ii[: T - L + 1] + L - 1] = 0.0
    if T < 3:
        return lower, primal
    # Blocks in order of length, so each can start from the solution for a shorter block with
    # the same first point (a warm start: two or three Newton steps instead of six or seven).
    lengths = np.concatenate([np.full(T - L + 1, L) for L in range(3, T + 1)])
    starts = np.concatenate([np.arange(T - L + 1) for L in range(3, T + 1)])
    # Blocks are padded to half or all of the grid (rounded up to a power of two, at least 32):
    # two compiled shapes per grid size (compiling costs more than padding), one for short grids.
    top = max(pow2(T), 32)
    levels = np.array([top // 2, top] if top > 64 else [top])
    pads = levels[np.searchsorted(levels, lengths)]
    # latest solution per (first point, bucket), as alpha_t + beta_t t
    last = np.full((T, nb, 2, V), np.nan)
    pb = p.transpose(1, 0, 2)  # (nb, T, V)
    with x64():
        for P in levels:
            sel = np.nonzero(pads == P)[0]
            if sel.size == 0:
                continue
            # At least 256 blocks per chunk: short grids of similar length then share one shape.
            n_chunk = max(1, _CHUNK_SIZE // (P * max(V, 8) * nb))
            n_chunk = min(n_chunk, max(pow2(sel.size), 256))
            for lo in range(0, sel.size, n_chunk):
                part = sel[lo : lo + n_chunk]
                i0, L = starts[part], lengths[part]
                fill = n_chunk - part.size  # pad the last chunk with copies of its first block
                i0 = np.concatenate([i0, np.full(fill, i0[0])])
                L = np.concatenate([L, np.full(fill, L[0])])
                idx = np.minimum(i0[:, None] + np.arange(P), T - 1)
                mask = np.arange(P) < L[:, None]
                j0 = i0 + L - 1
                mid = (t[i0] + t[j0]) / 2
                half = (t[j0] - t[i0]) / 2
                x = np.where(mask, (t[idx] - mid[:, None]) / half[:, None], 0.0)
                prev = last[i0]  # (n, nb, 2, V)
                init = np.stack(
                    [
                        prev[:, :, 0] + prev[:, :, 1] * mid[:, None, None],
                        prev[:, :, 1] * half[:, None, None],
                    ],
                    axis=2,
                )
                warm = np.isfinite(init).all(axis=(2, 3))
                # (block, bucket) pairs run as one batch of n * nb softmax regressions
                f, d, theta, _ = _block_kernel(
                    jnp.asarray(np.repeat(x, nb, axis=0)),
                    jnp.asarray(pb[:, idx].transpose(1, 0, 3, 2).reshape(-1, V, P)),
                    jnp.asarray(np.repeat(mask, nb, axis=0)),
                    jnp.asarray(np.nan_to_num(init).reshape(-1, 2, V)),
                    jnp.asarray(warm.reshape(-1)),
                    jnp.zeros((n_chunk * nb, 2, V)),
                    max_iter=_MAX_NEWTON,
                )
                k = part.size
                f = np.asarray(f).reshape(-1, nb)[:k]
                d = np.asarray(d).reshape(-1, nb)[:k]
                theta = np.asarray(theta).reshape(-1, nb, 2, V)[:k]
                beta_t = theta[:, :, 1] / half[:k, None, None]
                sol = np.stack([theta[:, :, 0] - beta_t * mid[:k, None, None], beta_t], axis=2)
                # Within a chunk blocks come in order of length: keep each start's longest.
                _, first = np.unique(i0[:k][::-1], return_index=True)
                pick = k - 1 - first
                last[i0[pick]] = sol[pick]
                a, b = i0[:k], j0[:k]
                if solutions is not None:
                    solutions[a, b] = sol
                f = np.where(np.isfinite(f), np.maximum(f, 0.0), np.inf)
                primal[a, b] = f.sum(axis=1)
                cert = np.clip(d - _ROUNDING * L[:k, None], 0.0, f)
                lower[a, b] = cert.sum(axis=1)
    return lower, primal


def token_buckets(
    target: Target, size: int = AUTO_BUCKET_SIZE, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Token buckets for the bucketed segmentation bound: tokens by mean probability, dealt out.

    The bound loses, per block, what the bucket totals alone could tell (the KL between bucket
    masses), and keeps each bucket's internal movement. Dealing the tokens, most probable
    first, round-robin into buckets makes every bucket a similar mix, so that bucket masses move
    little. No layout won everywhere on random smooth curves (``benchmarks/throughput.py``,
    ``large_vocab.bucket_tightness.layout_over_exact``: at V = 16 chunks of consecutive tokens
    kept 0.73-0.90 of the exact bound against 0.48-0.63 round-robin, at V = 30 random buckets
    0.70-0.73 against 0.56-0.58, at V = 64 round-robin 0.56-0.63 against 0.51-0.59); bucket
    size matters more (at V = 64, 0.88 of the exact bound
    with 32 tokens per bucket, 0.70-0.75 with 16). Tokens past ``max_tokens`` are left out, which
    keeps the bound valid (each bucket's term is >= 0) and bounds its cost.

    Args:
      target: the curve (V tokens).
      size: tokens per bucket (>= 2; a bucket of one token bounds nothing).
      max_tokens: keep only this many most probable tokens (default: all).

    Returns:
      Disjoint (size,)-or-shorter int arrays of token indices, most probable first.

    Example:
      >>> import jaxfeat
      >>> [b.size for b in token_buckets(jaxfeat.targets.random_smooth(0, 3, 40), size=16)]
      [14, 13, 13]
    """
    size = _validate.positive_int(size, "size")
    if size < 2:
        raise ValueError(f"size={size} must be at least 2: a one-token bucket bounds nothing.")
    order = np.argsort(-np.asarray(target.probs, np.float64).mean(axis=0), kind="stable")
    if max_tokens is not None:
        order = order[: _validate.positive_int(max_tokens, "max_tokens")]
    n = -(-order.size // size)
    return [order[i::n] for i in range(n)]


def _bucketed(p: np.ndarray, buckets) -> np.ndarray:
    """(T, n_b, b) probabilities of each bucket's tokens, zero-padded to the largest bucket."""
    T, V = p.shape
    if buckets is None:
        return p[:, None, :]
    seen = np.zeros(V, bool)
    out = []
    for i, b in enumerate(buckets):
        b = np.asarray(b)
        if b.ndim != 1 or b.size == 0 or not np.issubdtype(b.dtype, np.integer):
            raise ValueError(f"buckets[{i}] must be a non-empty 1-d array of token indices.")
        if b.min() < 0 or b.max() >= V:
            raise ValueError(f"buckets[{i}] has a token index outside 0..{V - 1}.")
        if seen[b].any() or np.unique(b).size != b.size:
            raise ValueError(f"buckets[{i}] repeats a token; buckets must be disjoint.")
        seen[b] = True
        out.append(b)
    if not out:
        raise ValueError("buckets is empty; pass None for one bucket of every token.")
    width = max(b.size for b in out)
    q = np.zeros((T, len(out), width))
    for i, b in enumerate(out):
        q[:, i, : b.size] = p[:, b]
    return q


def _facing(slopes: np.ndarray, starts: int = 32) -> np.ndarray:
    """(n - 1,) directions (+1 right-facing, -1 left-facing) for the breaks of n slopes.

    A ReLU path whose knots all lie inside the grid has first slope ``-sum_{j in L} Delta_j``
    over the left-facing knots L, with ``Delta_j`` the slope change at knot j. Greedy toggling
    from several random subsets (seeded, so the result is reproducible) picks the L whose sum
    comes closest to ``-slopes[0]``.

    Args:
      slopes: (n, D) slopes of consecutive pieces, centred over tokens.
    """
    delta = np.diff(slopes, axis=0)
    k = delta.shape[0]
    rng = np.random.default_rng(0)
    best, best_norm = np.zeros(k, bool), np.inf
    for trial in range(starts):
        left = np.zeros(k, bool) if trial == 0 else rng.random(k) < 0.5
        r = slopes[0] + delta[left].sum(axis=0)
        while True:
            cand = r[None] + np.where(left[:, None], -delta, delta)
            norm = np.einsum("ij,ij->i", cand, cand)
            j = int(np.argmin(norm))
            if not norm[j] < np.dot(r, r) * (1 - 1e-12):
                break
            left[j], r = ~left[j], cand[j]
        if np.dot(r, r) < best_norm:
            best, best_norm = left.copy(), float(np.dot(r, r))
    return np.where(best, -1.0, 1.0)


def _partitions(C: np.ndarray, max_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact dynamic program over partitions of 0..T-1 into contiguous blocks.

    Args:
      C: (T, T) block costs, ``C[i, j]`` for block i..j, ``inf`` for i > j.
      max_blocks: M, the largest number of blocks.

    Returns:
      ``(best, start)``, both (M, T): ``best[m - 1, j]`` is the least total cost of points 0..j in
      exactly m blocks (``inf`` if m > j + 1) and ``start[m - 1, j]`` where its last block starts.
    """
    T = C.shape[0]
    best = np.full((max_blocks, T), np.inf)
    start = np.zeros((max_blocks, T), np.int64)
    best[0] = C[0]
    cols = np.arange(T)
    for m in range(1, max_blocks):
        # Row r: the last block starts at r + 1 after m blocks covering 0..r.
        cand = best[m - 1, :-1, None] + C[1:, :]
        r = np.argmin(cand, axis=0)
        best[m] = cand[r, cols]
        start[m] = r + 1
    return best, start


def _backtrack(start: np.ndarray, blocks: int) -> np.ndarray:
    j = start.shape[1] - 1
    out = []
    for m in range(blocks, 1, -1):
        i = int(start[m - 1, j])
        out.append(i)
        j = i - 1
    return np.asarray(out[::-1], np.int64)


# ---------------------------------------------------------------------------------------------
# Public API


@dataclasses.dataclass(frozen=True)
class SegmentationBound:
    """Result of :func:`segmentation_lower_bound`.

    Attributes:
      bounds: (k_max,) ``bounds[k - 1]`` is a certified lower bound on the mean KL (nats) of every
        k-feature ReLU or JumpReLU model on this grid; non-increasing in k.
      boundaries: ``boundaries[k - 1]`` is a (k,) array of the grid indices where blocks 2..k+1 of
        an optimal partition into k + 1 blocks start (with fewer than k + 1 grid points, the
        partition into single points, its last index repeated).
      knots: ``knots[k - 1]`` is (k,) t-values of those breaks, midway between the last point of a
        block and the first of the next; pass them to :func:`jaxfeat.fit` as ``init_knots``.
      directions: ``directions[k - 1]`` is (k,) +1 or -1 per break: which way a ReLU feature
        with that knot faces so that the blocks' own slopes are nearly reachable. k features
        with knots inside the grid make k + 1 pieces only if the first slope is minus the sum of
        the slope changes at the left-facing knots (THEORY.md, item 7); the set is chosen to
        make that sum closest to the first block's slope (a greedy subset-sum search from
        several starts). Pass them as ``init_directions``. All +1 where the blocks' solutions
        were not kept (very large problems).
      solver_tol: the most by which a block's computed cost may exceed its true minimum (nats,
        summed over the block's points): the gap between the solver's value and the certified
        value used instead, which already includes the rounding margin, so ``bounds`` need no
        correction. Typically ~1e-10; larger only where exact zeros in the target put a
        block's optimum at infinity in a way the solver does not reduce to a finite problem,
        where the certificate is weaker (still valid).
      subgrids: m, the number of interleaved sub-grids whose bounds were added up.
      buckets: the number of token buckets (1: the exact block costs).
      tol: the mean-KL tolerance asked about (nats), or ``None``.
      lower_bound: with ``tol``: 1 + the number of k whose bound exceeds ``tol``, i.e. every
        k < ``lower_bound`` provably cannot reach ``tol`` (at most ``k_max + 1``); else ``None``.
      seconds: wall-clock time of the computation.
    """

    bounds: np.ndarray
    boundaries: tuple[np.ndarray, ...]
    knots: tuple[np.ndarray, ...]
    directions: tuple[np.ndarray, ...]
    solver_tol: float
    subgrids: int
    buckets: int
    tol: float | None
    lower_bound: int | None
    seconds: float


def segmentation_lower_bound(
    target: Target,
    k_max: int,
    activation: str = "relu",
    *,
    tol: float | None = None,
    subgrid: int | None = None,
    buckets: Sequence[ArrayLike] | None = None,
) -> SegmentationBound:
    r"""Certified lower bounds on the mean KL of any k-feature model, for k = 1..k_max.

    With ReLU or JumpReLU encoders of an affine latent, the logits of a k-feature model are affine
    in t on at most k + 1 contiguous blocks of grid points, so

    .. math::
        \mathrm{LB}(k) = \frac{1}{T} \min_{\text{partitions into } k+1 \text{ blocks}}
        \sum_{\text{blocks } B} \min_{\alpha, \beta \in \mathbb{R}^V}
        \sum_{t \in B} \mathrm{KL}\big(p(t) \,\|\, \mathrm{softmax}(\alpha + \beta t)\big)

    is at most the mean KL of every such model. ``LB(k) > tol`` certifies that k features cannot
    reach ``tol``. Each block problem is solved by Newton's method in float64 and bounded from
    below by a dual feasible point, so the bound holds up to floating-point rounding (a margin
    for which is subtracted); the partition is an exact dynamic program. Cost: O(T^3 V^2) for the
    blocks plus O(k_max T^2).

    Args:
      target: the curve, T grid points and V tokens.
      k_max: largest number of features to bound (>= 1).
      activation: ``"relu"`` or ``"jumprelu"`` (the bound is the same for both).
      tol: optional mean-KL tolerance (nats, > 0): the result's ``lower_bound`` then counts the
        features certified necessary to reach it.
      subgrid: for long grids: split the grid into m = ceil(T / subgrid) interleaved sub-grids
        (every m-th point) of at most ``subgrid`` (>= 2) points, bound the KL sum on each and add
        them up. Valid, slightly weaker, and m^2 times cheaper than the full grid. ``None``
        picks the fewest sub-grids that keep the work near that of ``AUTO_SUBGRID`` points and
        3 tokens (the full grid up to 512 points for V = 3), per ``AUTO_BUCKETS_PER_BUDGET``
        token buckets.
      buckets: disjoint arrays of token indices (see :func:`token_buckets`). By the chain rule,
        ``KL(p || q) >= sum_b p(b) KL(p(.|b) || q(.|b))``, and ``q(.|b)`` is a softmax of the
        bucket's own logits, affine on each block when the model's are; so each block's cost
        may be replaced by a sum of small softmax regressions, one per bucket, weighted by the
        bucket's mass. Still a certified bound (tokens in no bucket are dropped, which only lowers
        it); one bucket of every token is the exact block cost. Cost O(T^3 V b) for buckets of b
        tokens instead of O(T^3 V^2). ``None``: one bucket up to ``AUTO_BUCKET_VOCAB`` tokens,
        else ``token_buckets(target, AUTO_BUCKET_SIZE)``, with the automatic sub-grids allowed
        work in proportion to the number of buckets (so the cost is linear in V).

    Returns:
      :class:`SegmentationBound`.

    Raises:
      ValueError: for ``k_max < 1``, an unknown activation, or ``"softplus"``, whose smooth
        features are not piecewise affine and get no certificate.

    Example:
      >>> import jaxfeat
      >>> sb = segmentation_lower_bound(jaxfeat.targets.temperature(nonmonotone=True, n=24), 3)
      >>> sb.bounds.shape, bool(sb.bounds[0] > 1e-3), [b.tolist() for b in sb.boundaries[:2]]
      ((3,), True, [[13], [11, 16]])
      >>> segmentation_lower_bound(jaxfeat.targets.oscillating(1, n=64), 8, tol=1e-3).lower_bound
      4
    """
    t0 = time.perf_counter()
    if not isinstance(target, Target):
        raise ValueError(f"target must be a jaxfeat.Target, got {type(target).__name__}.")
    k_max = _validate.positive_int(k_max, "k_max")
    if tol is not None:
        tol = _validate.positive_float(tol, "tol")
    _validate.activation(activation)
    if activation == "softplus":
        raise ValueError(
            "activation='softplus' has no segmentation bound: softplus features are smooth, not "
            "piecewise affine in t. Use 'relu' or 'jumprelu'."
        )
    t = np.asarray(target.t, np.float64)
    p = np.asarray(target.probs, np.float64)
    # Rows must sum to 1 in float64: otherwise the objective drifts along the gauge direction
    # (adding a constant to every logit) and is unbounded below.
    p = p / p.sum(axis=1, keepdims=True)
    T, V = p.shape
    if buckets is None and V > AUTO_BUCKET_VOCAB:
        buckets = token_buckets(target, AUTO_BUCKET_SIZE)
    pb = _bucketed(p, buckets)
    if subgrid is None:
        # 16: the per-point work besides V^2
        work = lambda n, nb, v: float(n) ** 3 * nb * (v * v + 16)
        budget = work(AUTO_SUBGRID, 1, 3) * max(1.0, pb.shape[1] / AUTO_BUCKETS_PER_BUDGET)
        parts = work(T, pb.shape[1], pb.shape[2]) / budget
        parts = int(np.ceil(np.sqrt(parts) - 1e-9))
        subgrid = -(-T // max(parts, 1))
    subgrid = _validate.positive_int(subgrid, "subgrid")
    if subgrid < 2:
        raise ValueError(f"subgrid={subgrid} must be at least 2 points.")
    # Interleaved sub-grids r, r + m, r + 2m, ... cover the grid; a k-feature model is affine on
    # at most k + 1 blocks of each, so their partition costs add up to a bound on the KL sum.
    m = -(-T // subgrid)
    bounds = np.zeros(k_max)
    solver_tol = 0.0
    for r in range(m):
        keep = np.arange(r, T, m)
        S = keep.size
        # The blocks' own (alpha, beta), for the knots' directions, where they fit in memory.
        sols = None
        if r == 0 and S * S * pb.shape[1] * pb.shape[2] <= _KEEP_SOLUTIONS:
            sols = np.full((S, S, pb.shape[1], 2, pb.shape[2]), np.nan)
        lower, primal = _block_costs(t[keep], pb[keep], sols)
        upper = np.triu_indices(S)
        # inf where a block's solver failed
        solver_tol = max(solver_tol, float(np.max(primal[upper] - lower[upper])))
        n_blocks = min(k_max + 1, S)
        best, start = _partitions(lower, n_blocks)
        exact = np.concatenate([best[:, -1], np.zeros(k_max + 1 - n_blocks)]) / T
        # At most k + 1 blocks: the bound is non-increasing in k even where certified block
        # costs are not exactly subadditive.
        bounds += np.minimum.accumulate(exact)[1:]
        if r == 0:
            boundaries, knots, directions = [], [], []
            for k in range(1, k_max + 1):
                b = _backtrack(start, min(k + 1, S))
                dirs = np.ones(k)
                if sols is not None:
                    firsts = np.concatenate([[0], b])
                    ends = np.concatenate([b - 1, [S - 1]])
                    beta = sols[firsts, ends, :, 1]  # (blocks, buckets, b): NaN for 1-2 points
                    if np.all(np.isfinite(beta)):
                        beta = beta - beta.mean(axis=-1, keepdims=True)
                        dirs[: b.size] = _facing(beta.reshape(b.size + 1, -1))
                if b.size < k:
                    b = np.concatenate([b, np.full(k - b.size, b[-1])])
                boundaries.append(keep[b])
                knots.append((t[keep[b - 1]] + t[keep[b]]) / 2)
                directions.append(dirs)
    return SegmentationBound(
        bounds=bounds,
        boundaries=tuple(boundaries),
        knots=tuple(knots),
        directions=tuple(directions),
        solver_tol=solver_tol,
        subgrids=m,
        buckets=pb.shape[1],
        tol=tol,
        lower_bound=None if tol is None else 1 + int(np.count_nonzero(bounds > tol)),
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------------------
# Continuity at the knots: the segmentation bound with a Lagrangian on each join

# Newton steps per priced block: each starts from the block's plain solution, and an unconverged
# block is still certified (by its dual point), a little lower. Three steps gave the bounds of
# four to 3e-14 (relative) and two to 1e-8, on tuning curves V = 32 at k = 12 and oscillating(7)
# and oscillating(4) at k = 32 and 18 (tol 1e-3).
_LAGRANGE_NEWTON = 3
# Blocks of fewer points carry no multiplier terms: one or two points fit any affine map exactly,
# so a term on such a block is unbounded below. Three-point blocks get small multipliers from
# their large covariances; pricing them certified one more count on oscillating(7) and (8) at
# T = 128, where blocks average 3.5 points (k = 31: 0.97 to 1.11 of 1e-3, against 4 points).
_PRICED = 3
# Multiples of each join's quadratic-model multiplier that are tried; the one with the best pair
# value is kept (none: the join is left unpriced).
_SCALES = (1.0, 0.75, 0.5)
# A deciding bound solves its triples' knot options in at least this many groups, checking after
# each whether the bound can still exceed the tolerance.
_DECIDE_GROUPS = 6


@dataclasses.dataclass(frozen=True)
class ContinuityBound:
    """Result of :func:`continuity_lower_bound`.

    Attributes:
      k: the number of ReLU features bounded.
      bound: certified lower bound on the mean KL (nats) of every k-feature ReLU model on this
        grid; at least ``plain``.
      plain: the segmentation bound ``LB(k)`` (:func:`segmentation_lower_bound`), the same
        relaxation without the joins.
      joins: pairs of adjacent blocks whose join carries a multiplier (the rest are unpriced).
      triples: blocks between two priced joins whose cost was solved with both multipliers at
        once (the rest use the sum of two half-weighted one-sided costs, a weaker bound).
      seconds: wall-clock time.
    """

    k: int
    bound: float
    plain: float
    joins: int
    triples: int
    seconds: float


def _priced_blocks(t, p, a, b, lin, warm) -> np.ndarray:
    """Certified minima over (alpha, beta) of ``cost(a..b) + lin[0] . alpha + lin[1] . beta``.

    Args:
      t: (T,) grid; p: (T, V) target.
      a, b: (n,) first and last point of each block (at least 3 points).
      lin: (n, 2, V) linear coefficients of (alpha, beta) in units of t, summing to 0 over tokens.
      warm: (n, 2, V) starting (alpha, beta) in units of t.

    Returns:
      (n,) certified lower bounds, ``-inf`` where the certificate failed.
    """
    T, V = p.shape
    n = a.size
    L = b - a + 1
    cert = np.full(n, -np.inf)
    order = np.argsort(L, kind="stable")
    pads = np.maximum(8, 2 ** np.ceil(np.log2(np.maximum(L, 1))).astype(np.int64))
    with x64():
        for P in np.unique(pads):
            rows = order[pads[order] == P]
            # Few compiled shapes: a power of four of at least 256 blocks, up to the memory cap
            # (powers of two compiled 23 shapes in the quick vocabulary sweep, at about 2 s each).
            n_chunk = 256
            while n_chunk < rows.size:
                n_chunk *= 4
            n_chunk = min(max(1, _CHUNK_SIZE // (P * max(V, 8))), n_chunk)
            for lo in range(0, rows.size, n_chunk):
                part = rows[lo : lo + n_chunk]
                pp = np.concatenate([part, np.full(n_chunk - part.size, part[0])])
                i0, Lp = a[pp], L[pp]
                j0 = i0 + Lp - 1
                idx = np.minimum(i0[:, None] + np.arange(P), T - 1)
                mask = np.arange(P) < Lp[:, None]
                mid, half = (t[i0] + t[j0]) / 2, (t[j0] - t[i0]) / 2
                x = np.where(mask, (t[idx] - mid[:, None]) / half[:, None], 0.0)
                th = warm[pp]
                init = np.stack([th[:, 0] + th[:, 1] * mid[:, None], th[:, 1] * half[:, None]], 1)
                ca, cb = lin[pp, 0], lin[pp, 1]
                lin_b = np.stack([ca, (cb - ca * mid[:, None]) / half[:, None]], axis=1)
                f, d, _, _ = _block_kernel(
                    jnp.asarray(x),
                    jnp.asarray(p[idx].transpose(0, 2, 1)),
                    jnp.asarray(mask),
                    jnp.asarray(init),
                    jnp.asarray(np.ones(n_chunk, bool)),
                    jnp.asarray(lin_b),
                    max_iter=_LAGRANGE_NEWTON,
                )
                k = part.size
                f, d = np.asarray(f)[:k], np.asarray(d)[:k]
                c = np.minimum(d - _ROUNDING * Lp[:k], np.where(np.isfinite(f), f, np.inf))
                cert[part] = np.where(np.isfinite(d), c, -np.inf)
    return cert


def _map_covariance(t, p, a, b, theta, tau) -> np.ndarray:
    """(n, s, V, V) inverse-Hessian covariance of each block's map at ``tau`` (n, s), at its
    plain optimum (one pseudo-inverse per block, whatever the number of positions s).

    The quadratic model of a block's cost around its optimum: moving its map ``A(tau)`` by ``v``
    costs about ``v . pinv(Cov) v / 2``. Only used to choose multipliers, so no certificate.
    """
    T, V = p.shape
    n = a.size
    out = np.zeros((n, tau.shape[1], V, V))
    L = b - a + 1
    P = int(L.max(initial=1))
    step = max(1, (1 << 22) // (P * V * V + 1))
    for lo in range(0, n, step):
        r = np.arange(lo, min(n, lo + step))
        idx = np.minimum(a[r, None] + np.arange(P), T - 1)
        m = (np.arange(P) < L[r, None]).astype(np.float64)
        mid, half = (t[a[r]] + t[b[r]]) / 2, (t[b[r]] - t[a[r]]) / 2
        x = (t[idx] - mid[:, None]) / half[:, None] * m
        z = theta[r, 0][:, None, :] + theta[r, 1][:, None, :] * t[idx][:, :, None]
        q = np.exp(z - z.max(axis=-1, keepdims=True))
        q /= q.sum(axis=-1, keepdims=True)
        H = np.zeros((r.size, 2, V, 2, V))
        for u in range(2):
            for w in range(2):
                wx = m * x ** (u + w)  # (n, P)
                diag = np.einsum("np,npv->nv", wx, q)
                H[:, u, :, w, :] = diag[:, :, None] * np.eye(V) - np.einsum(
                    "npv,npw->nvw", q * wx[:, :, None], q
                )
        Hp = np.linalg.pinv(H.reshape(r.size, 2 * V, 2 * V), rcond=1e-10, hermitian=True)
        Hp = Hp.reshape(r.size, 2, V, 2, V)
        xt = ((tau[r] - mid[:, None]) / half[:, None])[:, :, None, None]
        aa, ab, bb = (
            Hp[:, None, 0, :, 0],
            Hp[:, None, 0, :, 1] + Hp[:, None, 1, :, 0],
            Hp[:, None, 1, :, 1],
        )
        out[r] = aa + xt * ab + xt**2 * bb
    return out


def _knot_positions(t: np.ndarray, e: np.ndarray, splits: int) -> np.ndarray:
    """(n, splits, 2) the ends of each of ``splits`` equal pieces of gap e (t_e to t_e+1).

    A join's knot lies somewhere in its gap; for a fixed multiplier the Lagrangian is concave in
    the knot's position, so on each piece its least value is at one of the piece's ends.
    """
    lo, hi = t[e], t[np.minimum(e + 1, t.size - 1)]
    f = np.arange(splits + 1) / splits
    ends = lo[:, None] + (hi - lo)[:, None] * f
    return np.stack([ends[:, :-1], ends[:, 1:]], axis=-1)


def _outside(first: np.ndarray, last: np.ndarray, total: int) -> np.ndarray:
    """(T, T) least plain cost of points 0..i-1 and j+1..T-1 in at most ``total`` blocks."""
    best = np.full((first.shape[0], first.shape[0]), np.inf)
    for m1 in range(min(total, first.shape[1] - 1) + 1):
        m2 = total - m1
        if m2 < last.shape[1]:
            best = np.minimum(best, first[:, m1][:, None] + last[:, m2][None, :])
    return best


def _join_dp(k, plain_c, pi, pe, pj, R, Lf, ca, cb, mid) -> float:
    """The least total, over partitions into blocks with priced and unpriced joins and free
    breaks using at most k knots, of :func:`continuity_lower_bound`'s block values.

    ``R`` and ``Lf`` (n, O) are each priced join's left and right block values per knot option,
    ``mid`` (combos, O, O) the value of the block between joins ``ca`` and ``cb``.
    """
    T = plain_c.shape[0]
    n, O = R.shape
    # Dynamic program over the gaps, left to right. N[s, j, u]: least cost of the blocks before
    # block s..j (which has no priced join on its left), u knots used; J[q, o, u]: the same for the
    # right block of priced join q, its knot at option o.
    N = np.full((T, T, k + 1), np.inf)
    N[0, :, 0] = 0.0
    J = np.full((n, O, k + 1), np.inf)
    by_end = [np.nonzero(pj == j)[0] for j in range(T)] if n else [np.zeros(0, int)] * T
    by_gap = [np.nonzero(pe == j)[0] for j in range(T)] if n else [np.zeros(0, int)] * T
    combo_gap = pe[cb] if ca.size else np.zeros(0, np.int64)
    for j in range(T):
        ends = by_end[j]
        vals = np.concatenate(
            [
                N[: j + 1, j] + plain_c[: j + 1, j][:, None],
                (J[ends] + Lf[ends][:, :, None]).reshape(-1, k + 1),
            ]
        )
        starts = np.concatenate([np.arange(j + 1), np.repeat(pe[ends] + 1, O)])
        if j == T - 1:
            break
        # An unpriced join to every next block, except where the join is priced; a free break
        # (two knots) to every next block.
        low = np.min(vals, axis=0)
        join = np.broadcast_to(low, (T - j - 1, k + 1)).copy()  # next block j+1..l, row l-j-1
        gap = by_gap[j]
        for l in np.unique(pj[gap]):
            priced = np.zeros(j + 1, bool)
            priced[pi[gap][pj[gap] == l]] = True
            rest = vals[~priced[starts]]
            join[l - j - 1] = np.min(rest, axis=0) if rest.size else np.inf
        # N[j + 1] is written only here, after its last block ended at gap j
        N[j + 1, j + 1 :, 1:] = join[:, :-1]
        if k >= 2:
            N[j + 1, j + 1 :, 2:] = np.minimum(N[j + 1, j + 1 :, 2:], low[None, :-2])
        if gap.size:
            # a priced join from a block with no priced join on its left
            J[gap, :, 1:] = np.minimum(J[gap, :, 1:], N[pi[gap], j, None, :-1] + R[gap][:, :, None])
            # ... or from the right block of another priced join
            sel = np.nonzero(combo_gap == j)[0]
            if sel.size:
                cand = J[ca[sel]][:, :, None, :-1] + mid[sel][:, :, :, None]  # (c, oa, ob, u)
                np.minimum.at(J[:, :, 1:], cb[sel], np.min(cand, axis=1))
    return float(np.min(vals))


def continuity_lower_bound(
    target: Target,
    k: int,
    *,
    tol: float | None = None,
    splits: int = 3,
    max_joins: int = 4096,
    max_triples: int = 32768,
    decide: bool = True,
) -> ContinuityBound:
    r"""A certified lower bound on the mean KL of k ReLU features that uses continuity at knots.

    The segmentation bound lets each of k + 1 blocks of grid points have its own affine logits.
    A ReLU model's logits are continuous: where a gap between grid points holds one knot, the
    affine maps of the blocks on either side meet at a point tau in that gap (a *join*); only a
    gap with two or more knots breaks the path freely. So every k-feature model is, on the grid,
    a partition into blocks whose breaks are joins (one knot each) or free breaks (two knots),
    at most k knots in all, with ``A(tau) = B(tau)`` (up to a constant on every logit) at each
    join.

    Relaxing each join's equality with a multiplier ``mu`` (summing to 0 over tokens) gives, by
    weak duality, a lower bound for every choice of the multipliers; here each join's ``mu`` is a
    function of the two blocks it joins (so a dynamic program over partitions can use it): the
    optimum of the blocks' quadratic models, scaled by the best of ``_SCALES`` for the pair
    alone. The left block's cost gains ``mu . A(tau)`` and the right one's ``-mu . B(tau)``;
    the knot's position is split into ``splits`` pieces of its gap, each with its own ``mu``, and
    on each piece the Lagrangian is concave in tau, so its least value is at one of the piece's
    ends (a choice the dynamic program makes). A block between two priced joins is solved with
    both terms at once, or bounded by half its cost with twice each term (convexity), and a
    dynamic program over blocks, knot positions and knots used finds the least total over all
    partitions. Every block cost is certified from below by a dual feasible point, so the bound
    holds whatever the multipliers and the solver's accuracy, up to floating-point rounding.

    JumpReLU features jump at their thresholds, so this bound is for ReLU only (the segmentation
    bound covers both). The full grid is used (no sub-grids) and every token is one bucket.

    Args:
      target: the curve, T grid points and V tokens.
      k: the number of features (>= 1).
      tol: the mean-KL tolerance asked about (nats): only joins on a partition whose plain cost
        is at most ``tol`` are priced (the others cannot bring a model below ``tol``).
        ``None`` prices joins by plain cost alone, up to ``max_joins``.
      splits: pieces of each gap with their own multiplier (>= 1): more is tighter and slower
        (on ``oscillating(6)``, T = 128, k = 27 at 1e-3: 0.975, 1.019 and 1.038 of the
        tolerance for 2, 3 and 4 pieces; the cost grows as the square).
      max_joins: most joins priced, those on the cheapest partitions first.
      max_triples: most blocks between two priced joins solved jointly, cheapest first.
      decide: with ``tol``, stop once whether the bound exceeds ``tol`` is settled: before
        solving the blocks between two priced joins, the bound with their split values (a valid
        bound) is returned if it already exceeds ``tol``, or if an upper estimate of the bound
        with their exact values (each at the block's plain solution) does not; and, while
        they are solved (in groups of knot options, the likeliest to be least first), once that
        estimate with the solved options' exact values does not. The answer to ``bound > tol``
        is the same either way; ``False`` always solves them all.

    Returns:
      :class:`ContinuityBound`.

    Raises:
      ValueError: for ``k < 1``, a non-positive ``tol``, ``splits < 1`` or negative limits.

    Example:
      >>> import jaxfeat
      >>> tgt = jaxfeat.targets.oscillating(1, n=32)
      >>> cb = continuity_lower_bound(tgt, 2, tol=0.05, decide=False)
      >>> bool(cb.bound > 1.5 * cb.plain > 0), cb.joins > 0
      (True, True)
    """
    t0 = time.perf_counter()
    target = _validate.target(target)
    k = _validate.positive_int(k, "k")
    tol = None if tol is None else _validate.positive_float(tol, "tol")
    splits = _validate.positive_int(splits, "splits")
    max_joins = _validate.nonnegative_int(max_joins, "max_joins")
    max_triples = _validate.nonnegative_int(max_triples, "max_triples")
    decide = _validate.boolean(decide, "decide")
    t = np.asarray(target.t, np.float64)
    p = np.asarray(target.probs, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    T, V = p.shape
    solutions = np.full((T, T, 1, 2, V), np.nan)
    plain_c, plain_f = _block_costs(t, p[:, None, :], solutions)
    n_blocks = min(k + 1, T)
    best, _ = _partitions(plain_c, n_blocks)
    plain = float(np.min(best[:, -1]))  # at most k + 1 blocks
    cap = np.inf if tol is None else T * tol * (1 + 1e-9)

    # Least plain cost of the points before i (after j) in at most m blocks, m = 0..k.
    rev, _ = _partitions(plain_c[::-1, ::-1].T, n_blocks)
    first = np.full((T, k + 1), np.inf)
    last = np.full((T, k + 1), np.inf)
    first[0], last[T - 1] = 0.0, 0.0
    for m in range(1, k + 1):
        mm = min(m, n_blocks)
        first[1:, m] = np.min(best[:mm, :-1], axis=0)
        last[:-1, m] = np.min(rev[:mm, :-1], axis=0)[::-1]
    out2 = _outside(first, last, k - 1)

    # Joins worth pricing: both blocks long enough, on a partition below the cap, cheapest first.
    found, through = [], []
    for e in range(_PRICED - 1, T - _PRICED):
        ii, jj = np.arange(e - _PRICED + 2), np.arange(e + _PRICED, T)
        cost = out2[np.ix_(ii, jj)] + plain_c[ii, e][:, None] + plain_c[e + 1, jj][None, :]
        r, c = np.nonzero(cost <= cap)
        found.append(np.stack([ii[r], np.full(r.size, e), jj[c]], axis=1))
        through.append(cost[r, c])
    pairs = np.concatenate(found) if found else np.zeros((0, 3), np.int64)
    through = np.concatenate(through) if through else np.zeros(0)
    pairs = pairs[np.argsort(through, kind="stable")[:max_joins]]
    # A multiplier only moves tokens present at every point of both blocks (so that every block
    # it touches keeps the token).
    pos = np.concatenate([np.zeros((1, V), np.int64), np.cumsum(p > 0, axis=0)])
    support = (pos[pairs[:, 2] + 1] - pos[pairs[:, 0]]) == (pairs[:, 2] - pairs[:, 0] + 1)[:, None]
    pairs, support = pairs[support.sum(axis=1) > 1], support[support.sum(axis=1) > 1]
    pi, pe, pj = pairs.T
    n = pi.size
    O = 2 * splits  # knot options per join: (piece, end)
    th_l = np.nan_to_num(solutions[pi, pe, 0])
    th_r = np.nan_to_num(solutions[pe + 1, pj, 0])
    taus = _knot_positions(t, pe, splits).reshape(n, O)
    mus = np.zeros((n, O, V))
    R = np.zeros((n, O))  # left block with its right term, per option
    Lf = np.zeros((n, O))  # right block with its left term
    R2, L2 = np.zeros((n, O)), np.zeros((n, O))  # the same with twice the multiplier

    def sides(rows, mus_, taus_):
        """Both one-sided costs of the joins ``rows`` for each (mu, tau) in the lists, in one
        kernel batch per side: a list of (left, right) pairs."""
        r = np.tile(rows, len(mus_))
        mu = np.concatenate(mus_)
        lin = np.stack([mu, mu * np.concatenate(taus_)[:, None]], axis=1)
        left = _priced_blocks(t, p, pi[r], pe[r], lin, th_l[r])
        right = _priced_blocks(t, p, pe[r] + 1, pj[r], -lin, th_r[r])
        return list(zip(np.split(left, len(mus_)), np.split(right, len(mus_)), strict=True))

    s = support.astype(np.float64)
    centre = s[:, :, None] * (np.eye(V) - s[:, None, :] / s.sum(1)[:, None, None]) * s[:, None, :]
    base = plain_c[pi, pe] + plain_c[pe + 1, pj]
    every = np.arange(n)
    centres = taus.reshape(n, splits, 2).mean(axis=2)  # the middle of each piece
    covs = _map_covariance(t, p, pi, pe, th_l, centres) + _map_covariance(
        t, p, pe + 1, pj, th_r, centres
    )
    for q in range(splits if n else 0):
        tm, cov = centres[:, q], covs[:, q]
        d = (th_l[:, 0] + th_l[:, 1] * tm[:, None]) - (th_r[:, 0] + th_r[:, 1] * tm[:, None])
        S = centre @ cov @ centre.transpose(0, 2, 1)
        d = np.einsum("nvw,nw->nv", centre, d)
        mu0 = np.einsum("nvw,nw->nv", np.linalg.pinv(S, rcond=1e-10, hermitian=True), d)
        # Each scale's pair value (the knot at the worse end of the piece), best first.
        vals, got = [], []
        flat = sides(
            every,
            [sc * mu0 for sc in _SCALES for _ in (0, 1)],
            [taus[:, 2 * q + c] for _ in _SCALES for c in (0, 1)],
        )
        for s_ in range(len(_SCALES)):
            ends = flat[2 * s_ : 2 * s_ + 2]
            vals.append(np.minimum(ends[0][0] + ends[0][1], ends[1][0] + ends[1][1]))
            got.append(ends)
        vals = np.stack(vals)  # (scales, n)
        rank = np.argsort(-vals, axis=0, kind="stable")
        open_ = np.ones(n, bool)
        for r in range(len(_SCALES)):
            pick = rank[r]
            rows = np.nonzero(open_ & (vals[pick, every] > base))[0]
            if rows.size == 0:
                break
            sc = np.asarray(_SCALES)[pick[rows]]
            # Twice the multiplier must be certifiable too: it bounds the blocks between two
            # joins (below), so every partition gets a finite value.
            twice = sides(
                rows, [2 * sc[:, None] * mu0[rows]] * 2, [taus[rows, 2 * q + c] for c in (0, 1)]
            )
            ok = np.all([np.isfinite(v) for pair in twice for v in pair], axis=0)
            rows, sel = rows[ok], pick[rows[ok]]
            open_[rows] = False
            for c in (0, 1):
                col = 2 * q + c
                mus[rows, col] = np.asarray(_SCALES)[sel][:, None] * mu0[rows]
                R[rows, col] = np.choose(sel, [g[c][0][rows] for g in got])
                Lf[rows, col] = np.choose(sel, [g[c][1][rows] for g in got])
                R2[rows, col] = twice[c][0][ok]
                L2[rows, col] = twice[c][1][ok]
        # An unpriced piece: the plain costs, exactly what a zero multiplier gives.
        for c in (0, 1):
            col = 2 * q + c
            R[open_, col] = R2[open_, col] = plain_c[pi, pe][open_]
            Lf[open_, col] = L2[open_, col] = plain_c[pe + 1, pj][open_]
    live = np.any(mus != 0, axis=(1, 2))
    keep = np.nonzero(live)[0]
    pi, pe, pj = pi[keep], pe[keep], pj[keep]
    mus, taus, R, Lf, R2, L2, th_r = (a[keep] for a in (mus, taus, R, Lf, R2, L2, th_r))
    n = pi.size

    # Blocks between two priced joins: adjacent pairs (a, b), b starting where a's right block does.
    index = {(int(i), int(j)): [] for i, j in zip(pi, pe, strict=True)}
    for q, (i, j) in enumerate(zip(pi, pe, strict=True)):
        index[(int(i), int(j))].append(q)
    ca, cb = [], []
    for q in range(n):
        nxt = index.get((int(pe[q]) + 1, int(pj[q])), [])
        ca.extend([q] * len(nxt))
        cb.extend(nxt)
    ca, cb = np.asarray(ca, np.int64), np.asarray(cb, np.int64)
    # split bound: min (c + la + lb) >= min (c/2 + la) + min (c/2 + lb)
    mid = 0.5 * L2[ca][:, :, None] + 0.5 * R2[cb][:, None, :]  # (combos, O, O)
    n_tri = 0
    if ca.size and max_triples:
        out3 = _outside(first, last, k - 2)
        cost3 = (
            out3[pi[ca], pj[cb]]
            + plain_c[pi[ca], pe[ca]]
            + plain_c[pe[ca] + 1, pj[ca]]
            + plain_c[pj[ca] + 1, pj[cb]]
        )
        tri = np.nonzero(cost3 <= cap)[0]
        tri = tri[np.argsort(cost3[tri], kind="stable")[:max_triples]]
        n_tri = tri.size
        A, Bq = ca[tri], cb[tri]  # each triple's left and right join
    dp = functools.partial(_join_dp, k, plain_c, pi, pe, pj, R, Lf, ca, cb)
    final, up = None, None
    if n_tri and decide and tol is not None:
        # Whether the bound exceeds tol may be settled before the exact triples: the split
        # values bound them from below, and the Lagrangian at the middle block's plain
        # solution from above (so the exact values cannot lift the bound past it).
        low = dp(mid)
        th = th_r[A]  # the middle block's plain solution, (n_tri, 2, V)
        # mu . (alpha + beta tau) at each knot option of the left (A) and right (Bq) joins
        za, zb = (
            np.einsum("nov,nov->no", mus[q_], th[:, None, 0] + th[:, None, 1] * taus[q_][..., None])
            for q_ in (A, Bq)
        )
        up = mid.copy()
        f0 = plain_f[pe[A] + 1, pj[A]]
        up[tri] = np.maximum(mid[tri], f0[:, None, None] - za[:, :, None] + zb[:, None, :])
        if low > T * tol or dp(up) <= T * tol:
            final, n_tri = low, 0
    if final is None:
        if n_tri:
            # every (oa, ob) option of a triple in one kernel batch, as many options at a time
            # as keep the batch's inputs to a few tens of MiB
            per = max(1, (1 << 21) // max(1, n_tri * V))
            opts = [(oa, ob) for oa in range(O) for ob in range(O)]
            if up is not None:
                # Deciding: the options most likely to carry the least partition first, and a
                # check after each group: once the solved options' exact values bring the upper
                # estimate to tol, no further option can lift the bound past it.
                opts.sort(key=lambda o: float(np.mean(up[tri, o[0], o[1]])))
                per = min(per, -(-len(opts) // _DECIDE_GROUPS))
            for lo in range(0, len(opts), per):
                group = opts[lo : lo + per]
                ma = np.concatenate([mus[A, oa] for oa, _ in group])
                mb = np.concatenate([mus[Bq, ob] for _, ob in group])
                ta = np.concatenate([taus[A, oa] for oa, _ in group])[:, None]
                tb = np.concatenate([taus[Bq, ob] for _, ob in group])[:, None]
                lin = np.stack([mb - ma, mb * tb - ma * ta], axis=1)
                r = np.tile(A, len(group))
                exact = np.split(_priced_blocks(t, p, pe[r] + 1, pj[r], lin, th_r[r]), len(group))
                for (oa, ob), ex in zip(group, exact, strict=True):
                    mid[tri, oa, ob] = np.maximum(mid[tri, oa, ob], ex)
                    if up is not None:
                        up[tri, oa, ob] = mid[tri, oa, ob]
                if up is not None and lo + per < len(opts) and dp(up) <= T * tol:
                    break  # the bound cannot exceed tol: what is solved is a valid bound
        final = dp(mid)
    return ContinuityBound(
        k=k,
        bound=max(final, plain, 0.0) / T,
        plain=plain / T,
        joins=int(n),
        triples=int(n_tri),
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------------------
# Sup-norm log-ratio bounds


def _features_for_moves(moves: int, activation: str) -> int:
    """Fewest features whose log-ratio can make ``moves`` alternating moves."""
    if moves == 0:
        return 0
    k = 1
    while max_turning_points(k, activation) < moves - 1:
        k += 1
    return k


@dataclasses.dataclass(frozen=True)
class TurningPointBound:
    """Result of :func:`turning_point_lower_bound`.

    Attributes:
      lower_bound: certified lower bound on the number of features.
      moves: n, the number of alternating increments of the chain, each larger than ``2 delta``.
      tokens: ``(j, m)``, the token pair whose log-ratio carries the chain (``None`` if no pair has
        an increment larger than ``2 delta``).
      chain: (n + 1,) grid indices of the chain.
      delta: the sup-norm log-ratio error the bound is for.
      activation: the encoder class the bound is for.
    """

    lower_bound: int
    moves: int
    tokens: tuple[int, int] | None
    chain: np.ndarray
    delta: float
    activation: str


def turning_point_lower_bound(
    target: Target, delta: float, *, activation: str = "relu", max_tokens: int = 64
) -> TurningPointBound:
    r"""Certified lower bound on k from turning points, for sup-norm log-ratio error ``delta``.

    For a token pair (j, m) let ``y(t) = log(p_j / p_m)``. If grid points
    :math:`i_0 < \dots < i_n` have increments :math:`y(i_{s+1}) - y(i_s)` alternating in sign,
    each larger than :math:`2\delta` in size, then every model within ``delta`` of y has
    increments of the same signs there, hence at least ``n - 1`` turning points, and a k-feature
    model has at most :func:`max_turning_points` ``(k)``. So

    .. math:: k \ge \min\{k : \operatorname{maxTP}(k) \ge n - 1\} \quad (\text{and } k \ge 1
       \text{ when } n \ge 1),

    which is ``n - 1`` for long chains (``n`` for ReLU when ``n <= 3``). The longest chain of a
    pair comes from one O(T) hysteresis scan with threshold ``2 delta`` plus a float64 margin;
    the bound maximises over all pairs of the ``max_tokens`` most probable full-support tokens
    (any pair gives a valid bound, so a subset stays sound).

    Args:
      target: the curve.
      delta: sup-norm log-ratio error (>= 0).
      activation: ``"relu"`` (default) or ``"jumprelu"`` (also valid for any encoder whose
        activation is affine on each side of one breakpoint).
      max_tokens: pairs are formed among this many most probable tokens (their max over t).

    Returns:
      :class:`TurningPointBound` with the bound and its witness (token pair and chain).

    Example:
      >>> import jaxfeat
      >>> tgt = jaxfeat.targets.temperature(nonmonotone=True)
      >>> res = turning_point_lower_bound(tgt, delta=0.1)
      >>> res.lower_bound, res.moves, res.tokens
      (2, 2, (1, 0))
    """
    delta = _validate.nonnegative_float(delta, "delta")
    activation = _validate.bound_activation(activation)
    max_tokens = _validate.positive_int(max_tokens, "max_tokens")
    data = _logratio.prepare(target)
    S = data.full[:max_tokens]
    if len(S) < 2:
        return TurningPointBound(0, 0, None, np.zeros(0, np.int64), delta, activation)
    jj, mm = np.triu_indices(len(S), 1)
    ratios = data.y[:, S[jj]] - data.y[:, S[mm]]
    tol = 2 * delta + _logratio.margin(data.y[:, S], delta)
    moves = _logratio.alternating_moves(ratios, tol)
    best = int(np.argmax(moves))
    n = int(moves[best])
    if n == 0:
        return TurningPointBound(0, 0, None, np.zeros(0, np.int64), delta, activation)
    chain = _logratio.alternating_chain(ratios[:, best], tol)
    j, m = int(S[jj[best]]), int(S[mm[best]])
    if ratios[chain[1], best] < ratios[chain[0], best]:
        j, m = m, j  # report the pair whose ratio rises first
    return TurningPointBound(
        _features_for_moves(n, activation), n, (j, m), chain, delta, activation
    )


@dataclasses.dataclass(frozen=True)
class PieceCountBound:
    """Result of :func:`piece_count_lower_bound`.

    Attributes:
      lower_bound: certified lower bound ``N* - 1`` on the number of features.
      blocks: (N*, 2) first and last grid index of each greedy maximal block.
      breaks: for each block but the last, the coordinate that stopped it from growing: ``(j, m)``
        for the log-ratio of tokens j and m, ``(j, -1)`` for token j's centred log-probability.
      delta: the sup-norm log-ratio error the bound is for.
    """

    lower_bound: int
    blocks: np.ndarray
    breaks: tuple[tuple[int, int], ...]
    delta: float


def piece_count_lower_bound(
    target: Target, delta: float, *, max_tokens: int = 64, pair_tokens: int = 16
) -> PieceCountBound:
    r"""Certified lower bound on k from the number of affine pieces, for sup-norm error ``delta``.

    On the grid, a model with k ReLU (or JumpReLU) features is affine in t on at most k + 1
    contiguous blocks of grid points, in every log-ratio coordinate at once. A block is feasible
    if every checked coordinate y (a centred log-probability or a pairwise log-ratio, all within
    ``delta`` of the model's) admits an affine f with :math:`|f(t_i) - y_i| \le \delta` on the
    block. Feasibility is inherited by sub-blocks, so the greedy left-to-right maximal blocks are
    the fewest, N*, and

    .. math:: k \ge N^* - 1.

    The check is exact: an affine f exists iff the slope interval
    :math:`\max_{i<e} (y_e - y_i - 2\delta)/(t_e - t_i) \le \min_{i<e} (y_e - y_i + 2\delta)/(t_e
    - t_i)` over all pairs in the block is non-empty (the strip width ``max(y - b t) -
    min(y - b t)`` is a max over pairs), updated in O(block length) per new point.

    Args:
      target: the curve.
      delta: sup-norm log-ratio error (>= 0).
      max_tokens: centred log-probabilities of this many most probable full-support tokens (centred
        over those tokens) are checked.
      pair_tokens: all pairwise log-ratios among this many most probable tokens are checked too.

    Returns:
      :class:`PieceCountBound` with the bound and the blocks.

    Example:
      >>> import numpy as np, jaxfeat
      >>> t = np.linspace(0.0, 1.0, 21)
      >>> z = np.stack([np.zeros_like(t), np.abs(t - 0.5)], axis=1)   # a V shape: 2 pieces
      >>> res = piece_count_lower_bound(jaxfeat.Target.from_logits(t, z), delta=0.01)
      >>> res.lower_bound, res.blocks.tolist()
      (1, [[0, 10], [11, 20]])
    """
    delta = _validate.nonnegative_float(delta, "delta")
    max_tokens = _validate.positive_int(max_tokens, "max_tokens")
    pair_tokens = _validate.positive_int(pair_tokens, "pair_tokens")
    data = _logratio.prepare(target)
    t, T = data.t, data.t.shape[0]
    S = data.full[:max_tokens]
    if len(S) < 2:
        return PieceCountBound(0, np.array([[0, T - 1]]), (), delta)
    P = data.full[: min(pair_tokens, len(S))]
    jj, mm = np.triu_indices(len(P), 1)
    ys = data.y[:, S]
    Y = np.concatenate(
        [ys - ys.mean(axis=1, keepdims=True), data.y[:, P[jj]] - data.y[:, P[mm]]], axis=1
    )
    labels = [(int(s), -1) for s in S]
    labels += [(int(P[a]), int(P[b])) for a, b in zip(jj, mm, strict=True)]
    d2 = 2 * (delta + _logratio.margin(ys, delta))
    blocks: list[tuple[int, int]] = []
    breaks: list[tuple[int, int]] = []
    s = 0
    lo = np.full(Y.shape[1], -np.inf)
    hi = np.full(Y.shape[1], np.inf)
    for e in range(1, T):
        dt = (t[e] - t[s:e])[:, None]
        dy = Y[e] - Y[s:e]
        new_lo = np.maximum(lo, np.max((dy - d2) / dt, axis=0))
        new_hi = np.minimum(hi, np.min((dy + d2) / dt, axis=0))
        gap = new_lo - new_hi
        if np.any(gap > 0):
            blocks.append((s, e - 1))
            breaks.append(labels[int(np.argmax(gap))])
            s = e
            lo = np.full(Y.shape[1], -np.inf)
            hi = np.full(Y.shape[1], np.inf)
        else:
            lo, hi = new_lo, new_hi
    blocks.append((s, T - 1))
    return PieceCountBound(len(blocks) - 1, np.asarray(blocks, np.int64), tuple(breaks), delta)
