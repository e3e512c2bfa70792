"""How many features a curve needs: the fitted count with its certified floor, and two estimates.

:func:`required_features` brackets the count between the certified segmentation bound
(:func:`jaxfeat.bounds.segmentation_lower_bound`) and the smallest k whose fit reaches the
tolerance; :func:`predicted_features` is the approximation-theory estimate for smooth curves, and
:func:`affine_rank` the count for unconstrained encoders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import _validate, distributed
from ._arrays import pow2
from ._fit import FitResult, fit_batch
from ._hinge import SolverSettings
from ._target import Target
from .bounds import (
    AUTO_BUCKET_VOCAB,
    AUTO_SUBGRID,
    continuity_lower_bound,
    segmentation_lower_bound,
)

METRICS = ("mean_kl", "max_kl")

# Feature counts fitted per target in one round of required_features, and the step of the
# feature slots: slots are k rounded up to a multiple of 8, so two successive rounds share one
# compiled fit kernel (about 4 s to compile). Powers of two cost more than they saved past 16
# slots: the matrix-free solver's preconditioner costs O((slots + 1)^3 V) a step, and
# random_smooth(B=3) at V = 256 (k 19, LB 13) took 568 s with its k = 17..20 round and second try
# in 32 slots, 207 s in 24. A fit's starts do not depend on its slots (JAX's partitionable
# threefry draws the same prefix at every length), only its float rounding does.
_KS_PER_ROUND = 4
_SLOT_STEP = 8


def _slots(k: int) -> int:
    """Feature slots of a compiled fit for counts up to ``k``: k rounded up to the step."""
    return _SLOT_STEP * max(1, -(-k // _SLOT_STEP))


@dataclasses.dataclass(frozen=True)
class RequiredFeatures:
    """Result of :func:`required_features`.

    Attributes:
      k: the smallest k <= k_max whose fit reaches ``tol`` (``None`` if none does). Fits are
        local searches, so this is an upper bound on the true minimum.
      lower_bound: 1 + the largest k certified insufficient: every k < lower_bound provably
        cannot reach ``tol``. Certified by the segmentation bound and, for ReLU where that left
        the bracket open, by the continuity bound. Always 1 for softplus, which has no
        certificate.
      segmentation_bound: the ``lower_bound`` the segmentation bound alone gives (at most
        ``lower_bound``; less where the continuity bound certified more).
      losses: (k_max,) the metric of the best fit for each k, NaN for k not fitted.
      bounds: (k_max,) certified lower bound on the metric for each k (mean-KL bounds, also
        valid for ``max_kl`` since the mean is at most the max): the segmentation bound, raised
        to the continuity bound where that was computed; zeros for softplus.
      fit: the winning :class:`jaxfeat.FitResult` (k features), or ``None``.
      tol: the tolerance, in nats.
      metric: ``"mean_kl"`` or ``"max_kl"``.
      activation: encoder name.
    """

    k: int | None
    lower_bound: int
    segmentation_bound: int
    losses: np.ndarray
    bounds: np.ndarray
    fit: FitResult | None
    tol: float
    metric: str
    activation: str


def required_features(target: Target, tol: float, **options: Any) -> RequiredFeatures:
    """The number of features a curve needs to reach a tolerance, with a certified floor.

    The segmentation bound (:func:`jaxfeat.bounds.segmentation_lower_bound`) rules out every k
    whose bound exceeds ``tol``; fits then start at the first k it does not rule out and go up, a
    few feature counts per compiled call, each started from the optimal segmentation's
    breakpoints, until one reaches ``tol``. Where that count K + 1 is above the bound, the search
    spends its effort on the decisive K before concluding: four times the restarts, of
    ``polish_steps`` steps, from the segmentation's breakpoints and from warm starts: the fit at
    K + 1 with one of its least important features dropped, the fit at K - 1 with a knot added,
    and the best fit at K; if one reaches ``tol`` it goes on to K - 1. For ReLU, where
    the bracket is still open, :func:`jaxfeat.bounds.continuity_lower_bound` then tries to
    certify counts in it as insufficient too, bisecting the bracket. So ``lower_bound <= k``, and
    ``k == lower_bound`` proves ``k`` optimal.

    Args:
      target: the curve.
      tol: tolerance on the metric, in nats (> 0).
      **options: the keywords of :func:`required_features_batch` (``metric``, ``k_max``,
        ``activation``, ``restarts``, ``max_steps``, ``polish``, ``polish_steps``,
        ``continuity``, ``key``, ``solver``, ``devices``,
        ``progress``).

    Returns:
      :class:`RequiredFeatures`.

    Example:
      >>> import jaxfeat
      >>> req = required_features(jaxfeat.targets.oscillating(1, n=128), tol=1e-3)
      >>> req.lower_bound <= req.k, req.k
      (True, 4)
    """
    if not isinstance(target, Target):
        raise ValueError(f"target must be a jaxfeat.Target, got {type(target).__name__}.")
    return required_features_batch([target], tol, **options)[0]


def required_features_batch(
    targets: Sequence[Target],
    tol: float,
    *,
    metric: str = "mean_kl",
    k_max: int = 64,
    activation: str = "relu",
    restarts: int = 16,
    max_steps: int = 200,
    polish: bool = True,
    polish_steps: int | None = None,
    continuity: bool = True,
    key: int = 0,
    solver: SolverSettings | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
) -> list[RequiredFeatures]:
    """:func:`required_features` for many targets on one grid, sharing compiled fits.

    Each round fits the next few feature counts of every target that has not yet reached
    ``tol`` in one :func:`jaxfeat.fit_batch` call with a fixed number of feature slots, so the
    whole search compiles a handful of kernels however many targets there are.

    In a multi-process job (:func:`jaxfeat.distributed.initialize`) every process calls it with
    the same inputs: the fits and the bounds are split over the processes and their results
    gathered before each decision, so every process runs the same search and returns the same
    results as a one-process run.

    Args:
      targets: targets with the same grid ``t`` and vocabulary size.
      tol: tolerance on the metric, in nats (> 0).
      metric: ``"mean_kl"`` (mean over the grid) or ``"max_kl"`` (worst grid point).
      k_max: largest k to try (>= 1).
      activation: ``"relu"``, ``"jumprelu"`` or ``"softplus"`` (no certificate: ``lower_bound``
        is 1 and ``bounds`` are zeros).
      restarts: restarts per fit.
      max_steps: optimiser steps per restart.
      polish: make a second try at the decisive count, the one below the first k that reaches
        ``tol``: four times the restarts, from four starts.
      polish_steps: steps of the second try (default ``2 * max_steps``).
      continuity: for ReLU, where the bracket is still open, try
        :func:`jaxfeat.bounds.continuity_lower_bound` in the bracket, bisecting it (only for
        V <= ``AUTO_BUCKET_VOCAB``, T <= ``AUTO_SUBGRID``, and counts whose segmentation bound
        is within reach of ``tol``).
      key: integer seed.
      solver: :class:`jaxfeat.SolverSettings` for the fits (default settings if ``None``).
      devices: as in :func:`jaxfeat.fit_batch`: given, or inside
        :func:`jaxfeat.distributed.local`, this process runs its own search, without the others.
      progress: a progress bar over the fitting rounds on stderr; ``None`` shows it only on a
        terminal.

    Returns:
      One :class:`RequiredFeatures` per target, in order.

    Raises:
      ValueError: for ``tol <= 0``, ``k_max < 1``, an unknown metric or activation, no targets,
        or targets on different grids.

    Example:
      Two features are certified too few for either curve, so nothing needs fitting:

      >>> import jaxfeat
      >>> curves = [jaxfeat.targets.oscillating(m, n=24) for m in (1, 2)]
      >>> [(r.k, r.lower_bound) for r in required_features_batch(curves, 1e-3, k_max=2)]
      [(None, 3), (None, 3)]
    """
    k_max = _validate.positive_int(k_max, "k_max")
    activation = _validate.activation(activation)
    restarts = _validate.positive_int(restarts, "restarts")
    max_steps = _validate.positive_int(max_steps, "max_steps")
    polish = _validate.boolean(polish, "polish")
    polish_steps = _validate.positive_int(
        2 * max_steps if polish_steps is None else polish_steps, "polish_steps"
    )
    continuity = _validate.boolean(continuity, "continuity")
    tol = _validate.positive_float(tol, "tol")
    if metric not in METRICS:
        raise ValueError(
            f"metric={metric!r} is unknown; use one of {', '.join(map(repr, METRICS))}."
        )
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty; give at least one jaxfeat.Target.")
    for tgt in targets:
        if not isinstance(tgt, Target):
            raise ValueError(f"targets must be jaxfeat.Target, got {type(tgt).__name__}.")
    t = np.asarray(targets[0].t)
    for tgt in targets[1:]:
        if tgt.probs.shape != targets[0].probs.shape or not np.array_equal(np.asarray(tgt.t), t):
            raise ValueError(
                "all targets must share one grid t and vocabulary size V; call "
                "required_features_batch once per grid."
            )

    n = len(targets)
    spread = devices is None and distributed.spreading()
    if activation == "softplus":
        bounds = [np.zeros(k_max) for _ in targets]
        seg_knots = None
    else:
        bounds, seg_knots, seg_dirs = _segmentations(targets, k_max, activation, spread)
    lower = [1 + int(np.count_nonzero(b > tol)) for b in bounds]  # bounds are non-increasing
    seg_lower = list(lower)
    losses = [np.full(k_max, np.nan) for _ in targets]
    found: list[int | None] = [None] * n
    fits: list[FitResult | None] = [None] * n
    next_k = list(lower)
    # Per target and k: (loss, knots, directions, importance) of the best fit so far.
    best: list[dict[int, tuple]] = [{} for _ in targets]
    probs = jnp.stack([tgt.probs for tgt in targets])
    dtype = probs.dtype
    bar = tqdm(
        total=n,
        desc="required features",
        unit="target",
        leave=False,
        disable=None if progress is None else not progress,
    )
    bar.update(sum(k > k_max for k in next_k))

    while True:
        todo = [i for i in range(n) if found[i] is None and next_k[i] <= k_max]
        if not todo:
            break
        rows = [
            (i, k)
            for i in todo
            for k in range(next_k[i], min(next_k[i] + _KS_PER_ROUND, k_max + 1))
        ]
        # Fixed shapes: pad the batch to a power of two of rounds and the slots to the slot step.
        size = _KS_PER_ROUND * pow2(-(-len(rows) // _KS_PER_ROUND))
        rows_padded = rows + [rows[0]] * (size - len(rows))
        slots = _slots(max(k for _, k in rows))
        idx = np.array([i for i, _ in rows_padded])
        ks = np.array([k for _, k in rows_padded])
        init = np.full((size, slots), np.nan)
        dirs = np.ones((size, slots))
        if seg_knots is not None:
            for r, (i, k) in enumerate(rows_padded):
                init[r, :k], dirs[r, :k] = seg_knots[i][k - 1], seg_dirs[i][k - 1]
        res = fit_batch(
            targets[0].t,
            probs[idx],
            ks,
            activation=activation,
            restarts=restarts,
            max_steps=max_steps,
            key=key,
            k_max=slots,
            solver=solver,
            init_knots=jnp.asarray(init, dtype),
            init_directions=jnp.asarray(dirs, dtype),
            devices=devices,
            progress=False,
        )
        values = np.asarray(getattr(res, metric))
        starts = _starts(res.params, activation)
        for r, (i, k) in enumerate(rows):
            losses[i][k - 1] = values[r]
            best[i][k] = (values[r], starts[0][r, :k], starts[1][r, :k], starts[2][r, :k])
        for i in todo:
            hits = [(k, r) for r, (j, k) in enumerate(rows) if j == i and values[r] <= tol]
            if hits:
                k, r = min(hits)
                found[i] = k
                fits[i] = res.take(r, k)
            next_k[i] += _KS_PER_ROUND
            if found[i] is not None or next_k[i] > k_max:
                bar.update(1)
        bar.set_postfix_str(f"k up to {max(k for _, k in rows)}")
    bar.close()

    # The second try at the decisive count K = k - 1, while the bracket is open: four rows per
    # target, each with the first pass's restarts and twice its steps (the step budget is traced,
    # so the first pass's compiled kernel is reused), from the segmentation's start and from the
    # neighbouring fits.
    todo = [i for i in range(n) if found[i] is not None and found[i] > lower[i]]
    while todo and polish:
        starts_: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i in todo:
            K = found[i] - 1
            if seg_knots is None:
                seg, seg_d = None, np.ones(K)
            else:
                seg, seg_d = np.asarray(seg_knots[i][K - 1]), np.asarray(seg_dirs[i][K - 1])
            rows_i = [(np.full(K, np.nan) if seg is None else seg, seg_d)]
            rows_i += _warm_starts(best[i], K, seg)
            rows_i = (rows_i * _KS_PER_ROUND)[:_KS_PER_ROUND]  # repeats draw other restarts
            starts_.extend((i, kn, dr) for kn, dr in rows_i)
        slots = _slots(max(found[i] for i in todo))
        size = _KS_PER_ROUND * pow2(-(-len(starts_) // _KS_PER_ROUND))
        padded = starts_ + [starts_[0]] * (size - len(starts_))
        init = np.full((size, slots), np.nan)
        dirs = np.ones((size, slots))
        for r, (_, kn, dr) in enumerate(padded):
            init[r, : kn.size], dirs[r, : dr.size] = kn, dr
        idx = np.array([i for i, _, _ in padded])
        # Rows of one target draw different restarts: keys differ by row.
        res = fit_batch(
            targets[0].t,
            probs[idx],
            np.array([found[i] - 1 for i in idx]),
            activation=activation,
            restarts=restarts,
            max_steps=polish_steps,
            key=key + 1,
            k_max=slots,
            solver=solver,
            init_knots=jnp.asarray(init, dtype),
            init_directions=jnp.asarray(dirs, dtype),
            devices=devices,
            progress=False,
        )
        values = np.asarray(getattr(res, metric))
        nxt = []
        for i in todo:
            K = found[i] - 1
            rows_i = [r for r, (j, _, _) in enumerate(starts_) if j == i]
            r = min(rows_i, key=lambda r: values[r])
            losses[i][K - 1] = min(losses[i][K - 1], values[r])
            if values[r] <= tol:
                found[i], fits[i] = K, res.take(r, K)
                kn, dr, imp = (a[r, :K] for a in _starts(res.params, activation))
                best[i][K] = (values[r], kn, dr, imp)
                if K - 1 >= lower[i]:
                    nxt.append(i)
        todo = nxt

    # The lower side: the continuity of ReLU paths at their knots, where the bracket is open.
    T, V = targets[0].probs.shape
    if activation == "relu" and continuity and V <= AUTO_BUCKET_VOCAB and T <= AUTO_SUBGRID:
        for i in range(*distributed.share(n)[:2]) if spread else range(n):
            if found[i] is not None:
                lower[i] = _bisect_continuity(targets[i], tol, lower[i], found[i], bounds[i])
        if spread:
            rows = distributed.share_rows(n)
            every = distributed.gather(
                (np.array([lower[i] for i in rows]), np.stack([bounds[i] for i in rows])), n
            )
            lower, bounds = [int(v) for v in every[0]], list(every[1])

    return [
        RequiredFeatures(
            k=found[i],
            lower_bound=lower[i],
            segmentation_bound=seg_lower[i],
            losses=losses[i],
            bounds=bounds[i],
            fit=fits[i],
            tol=tol,
            metric=metric,
            activation=activation,
        )
        for i in range(n)
    ]


def _segmentations(
    targets: Sequence[Target], k_max: int, activation: str, spread: bool
) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Each target's segmentation bounds, knots and knot directions; split over the processes
    of a multi-process job (``spread``) and gathered, so every process holds every target's."""
    n = len(targets)
    if not spread:
        segs = [segmentation_lower_bound(tgt, k_max, activation) for tgt in targets]
        return [s.bounds for s in segs], [s.knots for s in segs], [s.directions for s in segs]
    rows = distributed.share_rows(n)
    # knots[k - 1] holds k values: the k-th row of a (k_max, k_max) triangle, NaN above it.
    packed = []
    for i in rows:
        seg = segmentation_lower_bound(targets[i], k_max, activation)
        knots = np.full((k_max, k_max), np.nan)
        dirs = np.ones((k_max, k_max))
        for k in range(1, k_max + 1):
            knots[k - 1, :k], dirs[k - 1, :k] = seg.knots[k - 1], seg.directions[k - 1]
        packed.append((np.asarray(seg.bounds), knots, dirs))
    b, kn, dr = distributed.gather(tuple(np.stack(x) for x in zip(*packed, strict=True)), n)
    return (
        list(b),
        [[kn[i, k - 1, :k] for k in range(1, k_max + 1)] for i in range(n)],
        [[dr[i, k - 1, :k] for k in range(1, k_max + 1)] for i in range(n)],
    )


def _starts(params: Any, activation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, k) knots in units of t, directions and importance of a batch of fitted features.

    A feature's importance is the size of the slope change it makes at its knot, ``|w| * |l|``
    with ``l`` centred over tokens (the part softmax sees).
    """
    w, b = np.asarray(params.w, np.float64), np.asarray(params.b, np.float64)
    safe = np.where(w == 0, 1.0, w)
    edge = np.asarray(params.theta, np.float64) if activation == "jumprelu" else 0.0
    knots = np.where(w == 0, np.nan, (edge - b) / safe)
    l = np.asarray(params.l, np.float64)
    spread = np.linalg.norm(l - l.mean(axis=-1, keepdims=True), axis=-1)
    return knots, np.where(w < 0, -1.0, 1.0), np.abs(w) * spread


# Warm starts at K from the fit at K + 1: drop one of its this many least important features.
_DROPS = 4
# The continuity bound is tried at a count whose segmentation bound is at least this fraction of
# the tolerance: it raised the bound by 1.1x to 1.8x where we measured it (oscillating(m), T = 128,
# at 1e-2 to 1e-4: e.g. 0.46 to 0.83 of the tolerance for m = 1 at k = 2, 0.77 to 1.02 for m = 4
# at k = 18), so below that it costs time and certifies nothing.
_CONTINUITY_REACH = 0.55


def _bisect_continuity(target: Target, tol: float, lower: int, k: int, bounds: np.ndarray) -> int:
    """The lower bound after the continuity bound's tries in the open bracket [lower, k).

    A certificate at K (no K-feature model reaches ``tol``) holds for every count below K too,
    since fewer features are K features with some of them zero; so the tries bisect the bracket,
    upper half first, instead of climbing from ``lower`` one count at a time: the answer is the
    same where certification is monotone in K (and never lower), in about log2 of the tries
    (``oscillating(7)`` at 1e-3: 2 tries for 29..32, where the climb took 4). ``bounds`` (the
    (k_max,) certified bounds) is raised in place: the K-th and all below it.
    """
    lo, hi = lower, k - 1  # the untried counts that may still be certified
    while lo <= hi:
        K = (lo + hi + 1) // 2
        if bounds[K - 1] < _CONTINUITY_REACH * tol:
            hi = K - 1  # out of reach here, and further out at larger K (bounds fall with K)
            continue
        cb = continuity_lower_bound(target, K, tol=tol)
        bounds[:K] = np.maximum(bounds[:K], cb.bound)
        if cb.bound > tol:
            lo = K + 1
        else:
            hi = K - 1
    return lo  # raised only past a certified count


def _warm_starts(
    best: dict[int, tuple], K: int, seg: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(knots, directions) of K features from the best fits at K + 1, K and K - 1, best first.

    First the fit at K + 1 without its least important feature, the fit at K - 1 with the
    segmentation's breakpoint farthest from its knots added (facing right), and the best fit at
    K itself; then the other drops and the added knot facing left.
    """
    drops, adds, same = [], [], []
    if K + 1 in best:
        _, kn, dr, imp = best[K + 1]
        for j in np.argsort(imp, kind="stable")[:_DROPS]:
            drops.append((np.delete(kn, j), np.delete(dr, j)))
    if K - 1 in best and seg is not None:
        _, kn, dr, _ = best[K - 1]
        gap = np.min(np.abs(seg[:, None] - np.where(np.isnan(kn), np.inf, kn)[None]), axis=1)
        add = seg[int(np.argmax(gap))]
        adds = [(np.append(kn, add), np.append(dr, d)) for d in (1.0, -1.0)]
    if K in best:
        same.append(best[K][1:3])
    out = drops[:1] + adds[:1] + same + drops[1:] + adds[1:]
    return [(kn, dr) for kn, dr in out if kn.size == K]


def predicted_features(target: Target, tol: float) -> float:
    r"""Approximation-theory estimate of the features a smooth curve needs for mean KL ``tol``.

    Locally :math:`\mathrm{KL}(p \| \mathrm{softmax}(z + \delta)) \approx \tfrac12 \delta^\top F
    \delta` with :math:`F = \mathrm{diag}\, p - p p^\top`; with optimally placed free knots the best
    N-piece piecewise-linear fit of the logits on :math:`[0, 1]` has mean KL
    :math:`(\int g^{1/5})^5 / (1440 N^4)`, :math:`g = z''^\top F z'' = \mathrm{Var}_p(z'')`, so

    .. math::
        N(\varepsilon) = \Big(\int_0^1 (z''^\top F z'')^{1/5}\, dt\Big)^{5/4}
        (1440\, \varepsilon)^{-1/4}, \qquad k \approx N.

    The latent is rescaled to [0, 1]; ``z = log p`` (zeros clipped 30 nats below the row's
    largest logit) and ``z''`` are taken by finite differences on the possibly non-uniform grid.
    The estimate is asymptotic (many features, smooth curves) and for the mean over [0, 1],
    which is the grid mean on a uniform grid.

    Args:
      target: the curve (T >= 3 points for a second derivative).
      tol: mean-KL tolerance in nats (> 0).

    Returns:
      N(tol), a real number; round it up for a feature count.

    Example:
      >>> import jaxfeat
      >>> n1 = predicted_features(jaxfeat.targets.oscillating(1), 1e-3)
      >>> round(predicted_features(jaxfeat.targets.oscillating(1), 1e-3 / 16) / n1, 6)
      2.0
    """
    if not isinstance(target, Target):
        raise ValueError(f"target must be a jaxfeat.Target, got {type(target).__name__}.")
    tol = _validate.positive_float(tol, "tol")
    t = np.asarray(target.t, np.float64)
    p = np.asarray(target.probs, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    if t.size < 3:
        raise ValueError(f"target has {t.size} grid points; a second derivative needs at least 3.")
    u = (t - t[0]) / (t[-1] - t[0])
    z = np.log(np.maximum(p, 1e-300))
    z = np.maximum(z, z.max(axis=1, keepdims=True) - 30.0)
    h = np.diff(u)
    slope = np.diff(z, axis=0) / h[:, None]
    d2 = 2 * np.diff(slope, axis=0) / (h[1:] + h[:-1])[:, None]  # at interior points
    d2 = np.concatenate([d2[:1], d2, d2[-1:]], axis=0)  # ends take their neighbour's value
    g = np.sum(p * d2**2, axis=1) - np.sum(p * d2, axis=1) ** 2
    dens = np.maximum(g, 0.0) ** 0.2
    integral = float(np.sum((dens[1:] + dens[:-1]) / 2 * h))
    return integral**1.25 * (1440.0 * tol) ** -0.25


def affine_rank(target: Target, tol: float | None = None) -> int:
    r"""Feature count with unconstrained encoders: the affine rank of the log-probability path.

    With encoders free to be any function of t, k features reach exactly the paths whose centred
    log-probabilities lie in a k-dimensional affine subspace. Let ``X`` be the (T, V) matrix of
    log-probabilities with each row centred over tokens and then the mean row subtracted, and
    :math:`\sigma_1 \ge \sigma_2 \ge \dots` its singular values. Since ``KL(p || softmax(z + d))
    ~ d^T (diag p - p p^T) d / 2`` and that matrix is at most 1/2 in operator norm, truncating to
    rank r costs a mean KL of at most about :math:`\sum_{i > r} \sigma_i^2 / (4T)`. The count is the
    smallest r that brings this below ``tol``: a second-order upper estimate, never more than
    ``min(V, T) - 1``. With ``tol=None`` it is the numerical rank at machine precision.

    Args:
      target: the curve.
      tol: mean-KL tolerance in nats, or ``None``.

    Returns:
      The rank r.

    Example:
      >>> import jaxfeat
      >>> affine_rank(jaxfeat.targets.temperature())  # a straight logit ray
      1
      >>> osc = jaxfeat.targets.oscillating(1, n=64)  # logits (0, 3 sin, 2 cos): a planar loop
      >>> affine_rank(osc), affine_rank(osc, tol=0.5)
      (2, 1)
    """
    p = np.asarray(target.probs, np.float64)
    logp = np.log(np.maximum(p, 1e-300))
    # Tokens far below the most likely one carry no KL weight; clipping keeps log 0 finite.
    logp = np.maximum(logp, logp.max(axis=1, keepdims=True) - 30.0)
    X = logp - logp.mean(axis=1, keepdims=True)
    X = X - X.mean(axis=0)
    s = np.linalg.svd(X, compute_uv=False)
    if s.size == 0 or s[0] == 0:
        return 0
    if tol is None:
        eps = np.finfo(np.asarray(target.probs).dtype).eps
        return int(np.sum(s > s[0] * max(X.shape) * eps * 10))
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])  # tail[r] = sum_{i >= r} s_i^2
    return int(np.argmax(tail / (4 * X.shape[0]) <= tol))
