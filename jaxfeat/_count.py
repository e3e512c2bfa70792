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

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import _validate
from ._arrays import pow2
from ._fit import FitResult, fit_batch
from ._hinge import SolverSettings
from ._target import Target
from .bounds import segmentation_lower_bound

METRICS = ("mean_kl", "max_kl")

# Feature counts fitted per target in one round of required_features, and the feature-slot sizes
# (powers of two from 8): fixed shapes so that every round reuses one compiled fit kernel.
_KS_PER_ROUND = 4
_MIN_SLOTS = 8


@dataclasses.dataclass(frozen=True)
class RequiredFeatures:
    """Result of :func:`required_features`.

    Attributes:
      k: the smallest k <= k_max whose fit reaches ``tol`` (``None`` if none does). Fits are
        local searches, so this is an upper bound on the true minimum.
      lower_bound: 1 + the largest k that the segmentation bound certifies as insufficient: every
        k < lower_bound provably cannot reach ``tol``. Always 1 for softplus, which has no
        certificate.
      losses: (k_max,) the metric of the best fit for each k, NaN for k not fitted.
      bounds: (k_max,) certified lower bound on the metric for each k (the mean-KL bound, also
        valid for ``max_kl`` since the mean is at most the max); zeros for softplus.
      fit: the winning :class:`jaxfeat.FitResult` (k features), or ``None``.
      tol: the tolerance, in nats.
      metric: ``"mean_kl"`` or ``"max_kl"``.
      activation: encoder name.
    """

    k: int | None
    lower_bound: int
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
    breakpoints, until one reaches ``tol``. So ``lower_bound <= k``, and ``k == lower_bound``
    proves ``k`` optimal.

    Args:
      target: the curve.
      tol: tolerance on the metric, in nats (> 0).
      **options: the keywords of :func:`required_features_batch` (``metric``, ``k_max``,
        ``activation``, ``restarts``, ``max_steps``, ``key``, ``solver``, ``progress``).

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
    key: int = 0,
    solver: SolverSettings | None = None,
    progress: bool | None = None,
) -> list[RequiredFeatures]:
    """:func:`required_features` for many targets on one grid, sharing compiled fits.

    Each round fits the next few feature counts of every target that has not yet reached
    ``tol`` in one :func:`jaxfeat.fit_batch` call with a fixed number of feature slots, so the
    whole search compiles a handful of kernels however many targets there are.

    Args:
      targets: targets with the same grid ``t`` and vocabulary size.
      tol: tolerance on the metric, in nats (> 0).
      metric: ``"mean_kl"`` (mean over the grid) or ``"max_kl"`` (worst grid point).
      k_max: largest k to try (>= 1).
      activation: ``"relu"``, ``"jumprelu"`` or ``"softplus"`` (no certificate: ``lower_bound``
        is 1 and ``bounds`` are zeros).
      restarts: restarts per fit.
      max_steps: optimiser steps per restart.
      key: integer seed.
      solver: :class:`jaxfeat.SolverSettings` for the fits (default settings if ``None``).
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
    if activation == "softplus":
        bounds = [np.zeros(k_max) for _ in targets]
        seg_knots = None
    else:
        segs = [segmentation_lower_bound(tgt, k_max, activation) for tgt in targets]
        bounds = [s.bounds for s in segs]
        seg_knots = [s.knots for s in segs]
    lower = [1 + int(np.count_nonzero(b > tol)) for b in bounds]  # bounds are non-increasing
    losses = [np.full(k_max, np.nan) for _ in targets]
    found: list[int | None] = [None] * n
    fits: list[FitResult | None] = [None] * n
    next_k = list(lower)
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
        # Fixed shapes: pad the batch to a power of two of rounds and the slots to a power of two.
        size = _KS_PER_ROUND * pow2(-(-len(rows) // _KS_PER_ROUND))
        rows_padded = rows + [rows[0]] * (size - len(rows))
        slots = max(_MIN_SLOTS, pow2(max(k for _, k in rows)))
        idx = np.array([i for i, _ in rows_padded])
        ks = np.array([k for _, k in rows_padded])
        init = np.full((size, slots), np.nan)
        if seg_knots is not None:
            for r, (i, k) in enumerate(rows_padded):
                init[r, :k] = seg_knots[i][k - 1]
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
        )
        values = np.asarray(getattr(res, metric))
        for r, (i, k) in enumerate(rows):
            losses[i][k - 1] = values[r]
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

    return [
        RequiredFeatures(
            k=found[i],
            lower_bound=lower[i],
            losses=losses[i],
            bounds=bounds[i],
            fit=fits[i],
            tol=tol,
            metric=metric,
            activation=activation,
        )
        for i in range(n)
    ]


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
