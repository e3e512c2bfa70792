r"""What one linear logit feature can and cannot do, and certified lower bounds on k.

Two kinds of functions live here.

* Pure JAX functions for the single-feature laws, jit-able like optax losses:
  :func:`log_ratio`, :func:`single_feature_ratio_rate`, :func:`binary_feature`,
  :func:`ignored_bias_bounds`, :func:`token_peak_activation`.
* Host-side checks on a :class:`~jaxfeat.Target` that return certificates, computed in float64
  NumPy outside ``jit``: :func:`turning_points`, :func:`max_turning_points`,
  :func:`turning_point_lower_bound`, :func:`piece_count_lower_bound`,
  :func:`single_feature_check`, :func:`sup_log_ratio_error`.
* Explicit constructions: :func:`rise_then_fall` (two ReLU features whose ratio rises then falls)
  and :func:`zigzag_features` (k features reaching the largest number of turning points).

The certificates all use one error measure, the sup-norm log-ratio error of a model q against the
target p,

.. math::

   \delta(q) = \max_t \max_{j, m} \left| \log \frac{q_j(t)}{q_m(t)} - \log \frac{p_j(t)}{p_m(t)}
   \right| = \max_t \operatorname{osc}\big(z(t) - \log p(t)\big),
   \qquad \operatorname{osc}(x) = \max_v x_v - \min_v x_v,

over the tokens whose target probability is positive at every grid point (no finite-logit model is
within any finite error of an infinite log-ratio, so tokens with a zero are left out). A certified
bound ``k >= n`` means: no model with fewer than n ReLU (or JumpReLU) features of the latent is
within ``delta`` of the target in this measure. Comparisons carry a margin of a few hundred float64
ulps of the data's magnitude, so a rounding error never turns into a false certificate.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate
from ._model import Features
from ._model import logits as _logits
from ._target import Target

PEAK_STATUS = ("peaked", "rising", "falling")
"""Names of :attr:`PeakActivation.status` codes 0, 1, 2."""

_EPS64 = float(np.finfo(np.float64).eps)
_BOUND_ACTIVATIONS = ("relu", "jumprelu")


# ---------------------------------------------------------------------------------------------
# Single-feature laws (JAX)


def _token(index: object, vocab: int, name: str) -> int | jax.Array:
    if _validate.is_traced(index) or (
        isinstance(index, jax.Array)
        and index.ndim == 0
        and jnp.issubdtype(index.dtype, jnp.integer)
    ):
        return index  # type: ignore[return-value]
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise ValueError(f"{name}={index!r} must be an integer token index.")
    if not -vocab <= int(index) < vocab:
        raise ValueError(
            f"{name}={index} is out of range for V = {vocab} tokens; use 0 <= {name} < {vocab}."
        )
    return int(index) % vocab


def _finite(x: object, name: str) -> None:
    if not _validate.is_traced(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or inf; every entry must be finite.")


def log_ratio(
    params_or_logits: Features | ArrayLike,
    j: int,
    m: int,
    t: ArrayLike | None = None,
    activation: str = "relu",
) -> jax.Array:
    r"""Log-probability ratio of two tokens, :math:`\log(P_j / P_m) = z_j - z_m`.

    For one feature, ``z = a l + c`` and the log-ratio is affine in the activation,

    .. math:: \log \frac{P_j(a)}{P_m(a)} = a (l_j - l_m) + (c_j - c_m),

    so every ratio is an exponential, hence monotone, function of a.

    Args:
      params_or_logits: either :class:`~jaxfeat.Features` (then ``t`` is required) or an array of
        logits or log-probabilities with the vocabulary on the last axis, e.g. (T, V).
      j: numerator token.
      m: denominator token.
      t: (T,) latent grid, only with ``Features``.
      activation: encoder, only with ``Features`` (see :func:`jaxfeat.activations`).

    Returns:
      ``z[..., j] - z[..., m]``: shape (T,) for ``Features``, the leading shape of the array
      otherwise.

    Raises:
      ValueError: for ``Features`` without ``t``, ``t`` with an array, or a token index out of
        range.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxfeat import Features
      >>> p = Features.create(c=jnp.zeros(3), l=jnp.array([[-1.0, 0.0, 2.0]]),
      ...                     w=jnp.ones(1), b=jnp.zeros(1))
      >>> log_ratio(p, 2, 0, t=jnp.array([0.0, 1.0, 2.0]))
      Array([0., 3., 6.], dtype=float32)
      >>> log_ratio(jnp.log(jnp.array([0.5, 0.25, 0.25])), 0, 1)
      Array(0.6931472, dtype=float32)
    """
    if isinstance(params_or_logits, Features):
        if t is None:
            raise ValueError(
                "t is required when params_or_logits is Features; pass the (T,) grid "
                "of latent values, e.g. log_ratio(params, j, m, t=grid)."
            )
        z = _logits(params_or_logits, t, activation)
    else:
        if t is not None:
            raise ValueError("t is only used with Features; drop it when passing a logits array.")
        z = jnp.asarray(params_or_logits)
        if z.ndim < 1:
            raise ValueError(
                "params_or_logits must be Features or an array with the vocabulary on "
                f"the last axis, got shape {z.shape}."
            )
    V = z.shape[-1]
    return z[..., _token(j, V, "j")] - z[..., _token(m, V, "m")]


def single_feature_ratio_rate(l: ArrayLike, j: int, m: int) -> jax.Array:
    r"""Rate of the exponential :math:`P_j / P_m \propto e^{a (l_j - l_m)}` of one feature.

    .. math:: \frac{d}{da} \log \frac{P_j(a)}{P_m(a)} = l_j - l_m.

    Positive: token j gains on m as the feature fires harder; negative: it loses; zero: the ratio
    is the constant :math:`e^{c_j - c_m}`. The other logits c never change it.

    Args:
      l: (V,) logit vector of the feature.
      j: numerator token.
      m: denominator token.

    Returns:
      Scalar ``l[j] - l[m]``.

    Example:
      >>> import jax.numpy as jnp
      >>> single_feature_ratio_rate(jnp.array([-1.0, 0.0, 1.0]), 2, 0)
      Array(2., dtype=float32)
    """
    vec = jnp.asarray(l)
    if vec.ndim != 1:
        raise ValueError(f"l must be a (V,) logit vector, got shape {vec.shape}.")
    V = vec.shape[0]
    return vec[_token(j, V, "j")] - vec[_token(m, V, "m")]


def binary_feature(q: ArrayLike, c: ArrayLike | None = None, a_on: float = 1.0) -> jax.Array:
    r"""The logit vector of a binary feature that reproduces ``q`` exactly when on.

    .. math:: l = \frac{\log q - c}{a_\text{on}} - \overline{\left(\frac{\log q - c}{a_\text{on}}
       \right)}, \qquad \operatorname{softmax}(a_\text{on}\, l + c) = q,

    for every full-support q and any other logits c: a feature that is either off or on at one
    activation value is unconstrained. (The mean is removed only to make ``l`` unique; any
    constant shift gives the same softmax.)

    Ignoring the other logits (``c=None`` while the model has some c) makes the on-distribution
    ``r = softmax(log q + c)`` instead of q. Its error is at most ``osc(c) = max c - min c`` in
    every log-ratio (attained by the tokens with the largest and smallest c) and, by Hoeffding's
    lemma, at most ``osc(c)^2 / 8`` in KL (either direction); see :func:`ignored_bias_bounds`.

    Args:
      q: (V,) target distribution with every entry > 0, summing to 1.
      c: (V,) other logits, or ``None`` for zeros.
      a_on: the activation value when the feature is on (> 0).

    Returns:
      (V,) logit vector l.

    Raises:
      ValueError: if q has zeros (zero-probability tokens can only be approached: mix in a little
        uniform mass), negative or non-finite entries, does not sum to 1, or if c or a_on are
        invalid.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> q = jnp.array([0.7, 0.2, 0.1]); c = jnp.array([1.0, -2.0, 0.5])
      >>> l = binary_feature(q, c, a_on=2.0)
      >>> jax.nn.softmax(2.0 * l + c).round(6)
      Array([0.7, 0.2, 0.1], dtype=float32)
    """
    q = jnp.asarray(q)
    if q.ndim != 1 or q.shape[0] < 2:
        raise ValueError(f"q must be a (V,) distribution with V >= 2, got shape {q.shape}.")
    if not _validate.is_traced(q):
        _validate.simplex_rows(q, "q")
        if np.any(np.asarray(q) == 0):
            raise ValueError(
                "q has zero entries; a finite feature reaches only full-support "
                "distributions, zero-probability tokens can only be approached. Mix "
                "in a little uniform mass, e.g. q = (1 - 1e-6) * q + 1e-6 / V."
            )
    if not _validate.is_traced(a_on):
        a_on = _validate.positive_float(a_on, "a_on")
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(jnp.result_type(float))
    if c is None:
        c = jnp.zeros_like(q)
    else:
        c = jnp.asarray(c, q.dtype)
        if c.shape != q.shape:
            raise ValueError(
                f"c has shape {c.shape} but q has {q.shape}; give one logit per token."
            )
        _finite(c, "c")
    vec = (jnp.log(q) - c) / a_on
    return vec - jnp.mean(vec)


class IgnoredBiasBounds(NamedTuple):
    """Worst-case errors of a binary feature built while ignoring the other logits c.

    Attributes:
      log_ratio: ``osc(c) = max c - min c``, the largest log-ratio error (attained).
      kl: ``osc(c)^2 / 8``, a bound on KL between the intended and the realised distribution.
    """

    log_ratio: jax.Array
    kl: jax.Array


def ignored_bias_bounds(c: ArrayLike) -> IgnoredBiasBounds:
    r"""Error bounds for a binary feature built with ``c`` ignored (see :func:`binary_feature`).

    With ``l = log q / a_on`` the model's on-distribution is ``r = softmax(log q + c)``, and

    .. math::

       \max_{j, m} \left| \log \frac{r_j}{r_m} - \log \frac{q_j}{q_m} \right|
       = \operatorname{osc}(c), \qquad
       \mathrm{KL}(q \| r),\ \mathrm{KL}(r \| q) \le \frac{\operatorname{osc}(c)^2}{8}.

    The KL bound is Hoeffding's lemma: ``KL(q || r) = log E_q[e^c] - E_q[c]`` and
    ``KL(r || q) = E_r[c] - log E_q[e^c]`` are integrals of the cumulant function's second
    derivative, a variance of c, which is at most ``osc(c)^2 / 4``.

    Args:
      c: (V,) other logits.

    Returns:
      :class:`IgnoredBiasBounds` ``(log_ratio, kl)``.

    Example:
      >>> import jax.numpy as jnp
      >>> ignored_bias_bounds(jnp.array([0.0, 0.5, 2.0]))
      IgnoredBiasBounds(log_ratio=Array(2., dtype=float32), kl=Array(0.5, dtype=float32))
    """
    c = jnp.asarray(c)
    if c.ndim != 1 or c.shape[0] < 1:
        raise ValueError(f"c must be a (V,) logit vector, got shape {c.shape}.")
    _finite(c, "c")
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.result_type(float))
    osc = jnp.max(c) - jnp.min(c)
    return IgnoredBiasBounds(osc, osc**2 / 8)


class PeakActivation(NamedTuple):
    """Where one token's probability peaks as a single feature's activation grows.

    Attributes:
      a: the maximiser ``a* >= 0`` of ``P_j(a)`` on ``[0, inf)``: the root of
        ``E_{P(a)}[l] = l_j`` when peaked, ``0`` when falling, ``inf`` when rising.
      status: integer code, an index into :data:`PEAK_STATUS`: 0 ``"peaked"`` (rises then falls),
        1 ``"rising"`` (``l_j = max l``: non-decreasing for every a), 2 ``"falling"``
        (``l_j <= E_{softmax(c)}[l]``: non-increasing for every a >= 0).
    """

    a: jax.Array
    status: jax.Array

    @property
    def status_name(self) -> str:
        """The status as a string (for an unbatched, concrete result)."""
        return PEAK_STATUS[int(self.status)]


def token_peak_activation(
    l: ArrayLike,
    c: ArrayLike,
    j: int,
    *,
    max_doublings: int = 100,
    bisections: int = 64,
) -> PeakActivation:
    r"""The activation at which token j's probability peaks, ``P(a) = softmax(a l + c)``.

    .. math::

       \frac{d}{da} \log P_j(a) = l_j - \mathbb{E}_{P(a)}[l], \qquad
       \frac{d}{da} \mathbb{E}_{P(a)}[l] = \operatorname{Var}_{P(a)}(l) \ge 0,

    so ``log P_j`` is concave and each token is unimodal in a. The derivative is zero where
    ``E_{P(a*)}[l] = l_j``, which has a unique root ``a* > 0`` exactly when
    ``E_{softmax(c)}[l] < l_j < max l``. The root is found on the well-conditioned form

    .. math::

       s(a) = \log \sum_{l_v < l_j} e^{a l_v + c_v} (l_j - l_v)
            - \log \sum_{l_v > l_j} e^{a l_v + c_v} (l_v - l_j) = 0,

    strictly decreasing in a with the sign of the derivative (no cancellation, no saturation for
    large a): bracketed by doubling (at most ``max_doublings`` times) and refined by
    ``bisections`` bisection steps, so the function is jit-able and vmap-able.

    Args:
      l: (V,) feature logit vector.
      c: (V,) other logits.
      j: token index.
      max_doublings: cap on the bracketing steps (the bracket reaches ``2**max_doublings``).
      bisections: bisection steps after bracketing (64 reaches float64 resolution).

    Returns:
      :class:`PeakActivation` ``(a, status)``.

    Example:
      >>> import jax.numpy as jnp
      >>> l = jnp.array([-1.0, 0.0, 1.0]); c = jnp.array([0.0, 1.0, -1.0])
      >>> res = token_peak_activation(l, c, 1)
      >>> res.status_name, round(float(res.a), 4)
      ('peaked', 0.5)
      >>> token_peak_activation(l, c, 2).status_name, token_peak_activation(l, c, 0).status_name
      ('rising', 'falling')
    """
    vec = jnp.asarray(l)
    c = jnp.asarray(c)
    if vec.ndim != 1 or c.shape != vec.shape:
        raise ValueError(
            f"l and c must both be (V,) vectors, got shapes {vec.shape} and {c.shape}."
        )
    _finite(vec, "l")
    _finite(c, "c")
    dtype = jnp.result_type(vec, c, float)
    vec = vec.astype(dtype)
    c = c.astype(dtype)
    gap = vec - vec[_token(j, vec.shape[0], "j")]
    lower, higher = gap < 0, gap > 0
    log_gap = jnp.log(jnp.where(lower | higher, jnp.abs(gap), 1.0))

    def slope_sign(a):  # s(a) above: same sign as d/da log P_j
        x = a * vec + c + log_gap
        return jax.nn.logsumexp(jnp.where(lower, x, -jnp.inf)) - jax.nn.logsumexp(
            jnp.where(higher, x, -jnp.inf)
        )

    rising = ~jnp.any(higher)
    falling = ~rising & (slope_sign(jnp.zeros((), dtype)) <= 0)
    peaked = ~rising & ~falling

    def cond(state):
        _, hi, n = state
        return peaked & (slope_sign(hi) > 0) & (n < max_doublings)

    def body(state):
        _, hi, n = state
        return hi, 2 * hi, n + 1

    lo, hi, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), dtype), jnp.ones((), dtype), 0))

    def bisect(_, state):
        lo, hi = state
        mid = (lo + hi) / 2
        up = slope_sign(mid) > 0
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, bisections, bisect, (lo, hi))
    a = jnp.where(rising, jnp.inf, jnp.where(falling, 0.0, (lo + hi) / 2)).astype(dtype)
    status = jnp.where(rising, 1, jnp.where(falling, 2, 0)).astype(jnp.int32)
    return PeakActivation(a, status)


# ---------------------------------------------------------------------------------------------
# Turning points


def _nonneg(value: object, name: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a number >= 0.") from None
    if not np.isfinite(x) or x < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0.")
    return x


def _scan(y: np.ndarray, tol: float) -> np.ndarray:
    """Hysteresis scan down axis 0 of (T, C): number of alternating moves larger than tol."""
    if y.shape[1] <= 8:  # few curves: a plain loop is faster than array operations
        return np.array([max(len(_chain(col, tol)) - 1, 0) for col in y.T.tolist()], dtype=np.int64)
    v0 = y[0]
    lo, hi, ext = v0.copy(), v0.copy(), v0.copy()
    direction = np.zeros(v0.shape, np.int8)
    moves = np.zeros(v0.shape, np.int64)
    for v in y[1:]:
        undecided = direction == 0
        lo = np.where(undecided, np.minimum(lo, v), lo)
        hi = np.where(undecided, np.maximum(hi, v), hi)
        start_up = undecided & (v - lo > tol)
        start_dn = undecided & (hi - v > tol)
        up, dn = direction == 1, direction == -1
        ext = np.where(up, np.maximum(ext, v), np.where(dn, np.minimum(ext, v), ext))
        flip = (up & (ext - v > tol)) | (dn & (v - ext > tol))
        direction = np.where(flip, -direction, direction)
        direction = np.where(start_up, 1, np.where(start_dn, -1, direction)).astype(np.int8)
        ext = np.where(flip | start_up | start_dn, v, ext)
        moves += flip | start_up | start_dn
    return moves


def _chain(y, tol: float) -> np.ndarray:
    """Grid indices of the alternating chain found by the hysteresis scan of one curve."""
    y = y.tolist() if isinstance(y, np.ndarray) else y
    lo_i = hi_i = ext_i = 0
    direction = 0
    chain: list[int] = []
    for i in range(1, len(y)):
        v = y[i]
        if direction == 0:
            if v < y[lo_i]:
                lo_i = i
            if v > y[hi_i]:
                hi_i = i
            if v - y[lo_i] > tol:
                direction, chain, ext_i = 1, [lo_i], i
            elif y[hi_i] - v > tol:
                direction, chain, ext_i = -1, [hi_i], i
        elif direction * (v - y[ext_i]) > 0:
            ext_i = i
        elif direction * (y[ext_i] - v) > tol:
            chain.append(ext_i)
            direction, ext_i = -direction, i
    if direction:
        chain.append(ext_i)
    return np.asarray(chain, dtype=np.int64)


def turning_points(y: ArrayLike, tol: float = 0.0) -> int | np.ndarray:
    r"""Number of turning points of a sampled curve (or of each column).

    With ``tol = 0`` these are the sign changes of the slope sequence ``y[i+1] - y[i]`` after
    deleting zero slopes: the minimum number of monotone pieces minus one. Endpoints never count; a
    plateau between a rise and a fall counts once; a terrace (rise, flat, rise) not at all.

    With ``tol > 0`` the count has hysteresis: a change of direction counts only once the curve has
    moved by more than ``tol`` from its last extreme, so wiggles of size ``tol`` or less are
    ignored. Equivalently, it is ``n - 1`` for the longest chain of grid points whose ``n``
    successive increments alternate in sign and each exceed ``tol`` (0 when no increment does).

    Args:
      y: (T,) curve, or (T, ...) for one count per trailing index.
      tol: wiggle size to ignore (>= 0).

    Returns:
      An ``int`` for a 1-D curve, an integer array of the trailing shape otherwise.

    Example:
      >>> turning_points([0.0, 1.0, 1.0, 0.0])     # plateau between rise and fall
      1
      >>> turning_points([0.0, 1.0, 1.0, 2.0])     # terrace
      0
      >>> turning_points([0.0, 1.0, 0.9, 2.0, 0.0], tol=0.2)
      1
    """
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"y must be a curve of shape (T,) or (T, ...), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("y contains NaN or inf; turning points need a finite curve.")
    tol = _nonneg(tol, "tol")
    flat = arr.reshape(arr.shape[0], -1)
    counts = np.maximum(_scan(flat, tol) - 1, 0).reshape(arr.shape[1:])
    return int(counts) if arr.ndim == 1 else counts


def max_turning_points(k: int, activation: str = "relu") -> int:
    r"""Largest number of turning points of a log-ratio of k features of an affine latent.

    Every log-ratio ``u . z(t)`` is piecewise linear with at most k breakpoints, so it has at most
    k turning points. For ReLU features the count is smaller when k <= 2: a feature with ``w > 0``
    is off on the left, one with ``w < 0`` is off on the right, so the slope on the far left is the
    sum over the left-active features of their slopes, and a full alternation of k + 1 nonzero
    slopes needs a subset of the slope changes to sum to minus the first slope, impossible for
    k <= 2. Hence

    .. math::

       \text{relu: } \max = \begin{cases} k - 1 & k \in \{1, 2\} \\ k & k = 0 \text{ or } k \ge 3
       \end{cases}, \qquad \text{jumprelu: } \max = k,

    and both are attained (:func:`zigzag_features`; JumpReLU with ``theta < 0`` makes a single
    feature non-monotone).

    Args:
      k: number of features (>= 0).
      activation: ``"relu"`` or ``"jumprelu"``.

    Returns:
      The maximum number of turning points.

    Example:
      >>> [max_turning_points(k) for k in range(5)]
      [0, 0, 1, 3, 4]
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k={k!r} must be an integer >= 0.")
    _bound_activation(activation)
    if activation == "relu" and k in (1, 2):
        return int(k) - 1
    return int(k)


def _bound_activation(activation: str) -> str:
    if activation not in _BOUND_ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r}: the bounds need piecewise-affine encoders; "
            f"use one of {', '.join(map(repr, _BOUND_ACTIVATIONS))}."
        )
    return activation


def _features_for_moves(moves: int, activation: str) -> int:
    """Fewest features whose log-ratio can make ``moves`` alternating moves."""
    if moves == 0:
        return 0
    k = 1
    while max_turning_points(k, activation) < moves - 1:
        k += 1
    return k


# ---------------------------------------------------------------------------------------------
# Certified lower bounds


class _Data(NamedTuple):
    t: np.ndarray  # (T,) float64 grid
    y: np.ndarray  # (T, V) float64 log-probabilities (floored at the smallest float64)
    full: np.ndarray  # full-support tokens, most probable (max over t) first


def _prepare(target: object) -> _Data:
    if not isinstance(target, Target):
        raise ValueError(
            f"target must be a jaxfeat.Target, got {type(target).__name__}; wrap "
            "arrays with jaxfeat.Target(t, probs)."
        )
    p = np.asarray(target.probs, dtype=np.float64)
    t = np.asarray(target.t, dtype=np.float64)
    full = np.flatnonzero(np.all(p > 0, axis=0))
    full = full[np.argsort(-p[:, full].max(axis=0), kind="stable")]
    y = np.log(np.maximum(p, np.finfo(np.float64).tiny))
    return _Data(t, y, full)


def _margin(y: np.ndarray, delta: float) -> float:
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    return 256 * _EPS64 * (1.0 + scale + delta)


class TurningPointBound(NamedTuple):
    """Result of :func:`turning_point_lower_bound`.

    Attributes:
      k: certified lower bound on the number of features.
      moves: n, the number of alternating increments of the chain, each larger than ``2 delta``.
      tokens: ``(j, m)``, the token pair whose log-ratio carries the chain (``None`` if no pair has
        an increment larger than ``2 delta``).
      chain: (n + 1,) grid indices of the chain.
      delta: the sup-norm log-ratio error the bound is for.
      activation: the encoder class the bound is for.
    """

    k: int
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
      >>> res.k, res.moves, res.tokens
      (2, 2, (1, 0))
    """
    delta = _nonneg(delta, "delta")
    activation = _bound_activation(activation)
    max_tokens = _validate.positive_int(max_tokens, "max_tokens")
    data = _prepare(target)
    S = data.full[:max_tokens]
    if len(S) < 2:
        return TurningPointBound(0, 0, None, np.zeros(0, np.int64), delta, activation)
    jj, mm = np.triu_indices(len(S), 1)
    ratios = data.y[:, S[jj]] - data.y[:, S[mm]]
    tol = 2 * delta + _margin(data.y[:, S], delta)
    moves = _scan(ratios, tol)
    best = int(np.argmax(moves))
    n = int(moves[best])
    if n == 0:
        return TurningPointBound(0, 0, None, np.zeros(0, np.int64), delta, activation)
    chain = _chain(ratios[:, best], tol)
    j, m = int(S[jj[best]]), int(S[mm[best]])
    if ratios[chain[1], best] < ratios[chain[0], best]:
        j, m = m, j  # report the pair whose ratio rises first
    return TurningPointBound(
        _features_for_moves(n, activation), n, (j, m), chain, delta, activation
    )


class PieceCountBound(NamedTuple):
    """Result of :func:`piece_count_lower_bound`.

    Attributes:
      k: certified lower bound ``N* - 1`` on the number of features.
      blocks: (N*, 2) first and last grid index of each greedy maximal block.
      breaks: for each block but the last, the coordinate that stopped it from growing: ``(j, m)``
        for the log-ratio of tokens j and m, ``(j, -1)`` for token j's centred log-probability.
      delta: the sup-norm log-ratio error the bound is for.
    """

    k: int
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
      >>> res.k, res.blocks.tolist()
      (1, [[0, 10], [11, 20]])
    """
    delta = _nonneg(delta, "delta")
    max_tokens = _validate.positive_int(max_tokens, "max_tokens")
    pair_tokens = _validate.positive_int(pair_tokens, "pair_tokens")
    data = _prepare(target)
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
    d2 = 2 * (delta + _margin(ys, delta))
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


# ---------------------------------------------------------------------------------------------
# Single-feature check


def sup_log_ratio_error(target: Target, logits: ArrayLike) -> float:
    r"""Sup-norm log-ratio error of model logits against a target.

    .. math:: \max_t \max_{j, m \in F} \left| (z_j(t) - z_m(t)) - \log \frac{p_j(t)}{p_m(t)}
       \right| = \max_t \operatorname{osc}_F\big(z(t) - \log p(t)\big),

    over the set F of tokens with positive target probability at every grid point. Computed in
    float64.

    Args:
      target: the curve.
      logits: (T, V) model logits (or log-probabilities), e.g. :func:`jaxfeat.logits`.

    Returns:
      The error as a Python float (0 if fewer than two tokens have full support).

    Example:
      >>> import numpy as np, jaxfeat
      >>> tgt = jaxfeat.Target.from_logits([0.0, 1.0], [[0.0, 1.0], [0.0, 2.0]])
      >>> round(sup_log_ratio_error(tgt, np.array([[0.0, 1.0], [0.0, 2.5]])), 4)
      0.5
    """
    data = _prepare(target)
    z = np.asarray(logits, dtype=np.float64)
    if z.shape != data.y.shape:
        raise ValueError(
            f"logits has shape {z.shape}; it must match the target's (T, V) = {data.y.shape}."
        )
    if len(data.full) < 2:
        return 0.0
    d = z[:, data.full] - data.y[:, data.full]
    return float(np.max(d.max(axis=1) - d.min(axis=1)))


def _min_osc(A: np.ndarray, B: np.ndarray, iters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (N, V): a certified lower bound on min over lam in [0, 1] of osc(A - lam B), and
    the lam found. Every pair (argmax, argmin) gives a linear minorant of the convex objective."""
    N = A.shape[0]
    rows = np.arange(N)

    def value_slope(lam):
        w = A - lam[:, None] * B
        a, b = np.argmax(w, axis=1), np.argmin(w, axis=1)
        return w[rows, a] - w[rows, b], B[rows, b] - B[rows, a]

    lo, hi = np.zeros(N), np.ones(N)
    f_lo, g_lo = value_slope(lo)
    f_hi, g_hi = value_slope(hi)
    left, right = g_lo >= 0, (g_hi <= 0) & (g_lo < 0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        f, g = value_slope(mid)
        go = g < 0  # the minimum lies right of mid
        lo, f_lo, g_lo = np.where(go, mid, lo), np.where(go, f, f_lo), np.where(go, g, g_lo)
        hi, f_hi, g_hi = np.where(go, hi, mid), np.where(go, f_hi, f), np.where(go, g_hi, g)
    width = hi - lo
    bound = np.maximum(f_lo + np.minimum(g_lo, 0) * width, f_hi - np.maximum(g_hi, 0) * width)
    f0, _ = value_slope(np.zeros(N))
    f1, _ = value_slope(np.ones(N))
    bound = np.where(left, f0, np.where(right, f1, bound))
    lam = np.where(left, 0.0, np.where(right, 1.0, (lo + hi) / 2))
    return bound, lam


class Certificate(NamedTuple):
    """Why a target is not within ``tol`` of any single feature.

    Attributes:
      kind: ``"reversal"``: the log-ratio of ``tokens`` rises by more than ``2 tol`` between
        ``points[0]`` and ``points[1]`` and falls by more than ``2 tol`` between ``points[1]`` and
        ``points[2]`` (a single feature with a monotone activation makes every ratio monotone).
        ``"off_ray"``: no point of the segment between the centred log-probabilities at
        ``points[0]`` and ``points[2]`` is within ``2 tol`` (in osc) of the one at ``points[1]``
        (a single feature with a monotone activation traverses one ray in order).
        ``"pieces"``: the certified lower bound ``k >= 2`` of :func:`piece_count_lower_bound`
        (``points`` = the first grid index of each block); ReLU only. (For ReLU the turning-point
        bound gives ``k >= 2`` exactly when a ratio reverses, which is reported as a reversal.)
      points: grid indices, as above.
      tokens: the token pair for ``"reversal"``, else ``()``.
      value: the violated quantity: the smaller increment (reversal), the certified lower bound on
        the osc distance (off_ray), or the certified k (pieces).
    """

    kind: str
    points: tuple[int, ...]
    tokens: tuple[int, ...]
    value: float


class RayWitness(NamedTuple):
    """A single feature with an arbitrary monotone activation: ``z(t_i) = c + a_i l``.

    Attributes:
      c: (V,) other logits.
      l: (V,) feature logit vector.
      a: (T,) monotone, non-negative activation at each grid point.
    """

    c: jax.Array
    l: jax.Array
    a: jax.Array


class SingleFeatureCheck(NamedTuple):
    """Result of :func:`single_feature_check`.

    Attributes:
      representable: ``True`` (a witness within ``tol`` was found), ``False`` (a certificate proves
        none exists), or ``None`` (undecided: neither was found).
      status: ``"representable"``, ``"not_representable"`` or ``"undecided"``.
      witness: :class:`~jaxfeat.Features` (relu) or :class:`RayWitness` (monotone) when found.
      error: sup-norm log-ratio error of the witness (``inf`` without one).
      certificate: :class:`Certificate` when not representable.
      tol: the tolerance.
      encoder: ``"relu"`` or ``"monotone"``.
    """

    representable: bool | None
    status: str
    witness: Features | RayWitness | None
    error: float
    certificate: Certificate | None
    tol: float
    encoder: str


def _off_ray(Y: np.ndarray, thr: float, rounds: int = 4) -> Certificate | None:
    """Searches triples i1 < i2 < i3 whose middle point is off the segment of the outer two."""
    T = Y.shape[0]
    if T < 3:
        return None
    anchors = [0, T - 1]
    tested: set[tuple[int, int]] = set()
    for _ in range(rounds):
        segs = [(a, b) for a in anchors for b in anchors if b - a >= 2 and (a, b) not in tested]
        if not segs:
            return None
        i1 = np.concatenate([np.full(b - a - 1, a) for a, b in segs])
        i2 = np.concatenate([np.arange(a + 1, b) for a, b in segs])
        i3 = np.concatenate([np.full(b - a - 1, b) for a, b in segs])
        bound, _ = _min_osc(Y[i2] - Y[i3], Y[i1] - Y[i3])
        w = int(np.argmax(bound))
        if bound[w] > thr:
            return Certificate("off_ray", (int(i1[w]), int(i2[w]), int(i3[w])), (), float(bound[w]))
        tested.update(segs)
        if int(i2[w]) in anchors:
            return None
        anchors = sorted([*anchors, int(i2[w])])
    return None


def _ray_candidates(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(c, l) rays through the path: the end-to-end chord and the principal direction."""
    yc = y - y.mean(axis=1, keepdims=True)
    rays = [(y[0], y[-1] - y[0])]
    mean = yc.mean(axis=0)
    x = yc - mean
    gram = x @ x.T  # power iteration on the small (T, T) Gram matrix, no LAPACK call
    u = x @ (yc[-1] - yc[0]) + 1e-3 * np.linspace(1.0, 2.0, len(x))
    for _ in range(64):
        norm = np.linalg.norm(u)
        if not norm > 0:
            return rays
        u = gram @ (u / norm)
    v = x.T @ u
    if np.linalg.norm(v) > 0:
        v = v / np.linalg.norm(v)
        a = x @ v
        lo, hi = a.min(), a.max()
        if hi > lo:
            rays.append((mean + lo * v, (hi - lo) * v))
    return rays


def _osc_rows(d: np.ndarray) -> np.ndarray:
    return d.max(axis=1) - d.min(axis=1)


def _ray_witness(data: _Data, dtype) -> tuple[RayWitness, float, tuple, np.ndarray]:
    """Best monotone ray witness over the full-support tokens; also the ray ``(c, l)`` (full
    vocabulary) and the raw sup-norm projections ``a`` with ``y(t_i) ~ c + a_i l``."""
    F = data.full
    yF = data.y[:, F]
    best = None
    for c, d in _ray_candidates(yF):
        _, a_raw = _min_osc(yF - c, np.broadcast_to(d, yF.shape))
        for iso in (_isotonic(a_raw), -_isotonic(-a_raw)):
            err = float(np.max(_osc_rows(yF - c - iso[:, None] * d)))
            if best is None or err < best[3]:
                best = (c, d, iso, err, a_raw)
    c, d, a, _, a_raw = best  # type: ignore[misc]
    c_full = data.y[0].copy()
    l_full = np.zeros_like(c_full)
    c_full[F], l_full[F] = c, d
    shift = a.min()
    witness = RayWitness(
        jnp.asarray(c_full + shift * l_full, dtype),
        jnp.asarray(l_full, dtype),
        jnp.asarray(a - shift, dtype),
    )
    z = np.asarray(witness.c, np.float64) + np.outer(
        np.asarray(witness.a, np.float64), np.asarray(witness.l, np.float64)
    )
    err = float(np.max(_osc_rows(z[:, F] - yF)))
    return witness, err, (c_full, l_full), a_raw


def _isotonic(a: np.ndarray) -> np.ndarray:
    """Best non-decreasing fit in the sup norm: the midpoint of the running max and min."""
    return (np.maximum.accumulate(a) + np.minimum.accumulate(a[::-1])[::-1]) / 2


def _hinges(t: np.ndarray, a: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Candidate ``a(t) ~ alpha + beta relu(w t + b)``: flat on one side of a split, least-squares
    line on the other, the knot where the two meet. Returns (alpha, beta, w, b) tuples."""
    T = t.shape[0]
    span = t[-1] - t[0]

    def cums(x):
        return np.concatenate([[0.0], np.cumsum(x)])

    n, st, sa, stt, sta = (cums(x) for x in (np.ones(T), t, a, t * t, t * a))

    def line(i, j):  # least squares on [i, j)
        cnt, s_t, s_a = n[j] - n[i], st[j] - st[i], sa[j] - sa[i]
        den = cnt * (stt[j] - stt[i]) - s_t**2
        slope = np.where(
            den > 0, (cnt * (sta[j] - sta[i]) - s_t * s_a) / np.where(den > 0, den, 1), 0.0
        )
        return slope, (s_a - slope * s_t) / cnt

    out = []
    slope, icpt = line(0, T)
    tau = t[0] - span
    out.append((icpt + slope * tau, slope, 1.0, -tau))
    for s in range(T - 1):
        # flat on [0, s], line on [s+1, T-1]; and the mirror image
        for flat, lin, w in (((0, s + 1), (s + 1, T), 1.0), ((s + 1, T), (0, s + 1), -1.0)):
            alpha = (sa[flat[1]] - sa[flat[0]]) / (n[flat[1]] - n[flat[0]])
            slope, icpt = line(*lin)
            if slope == 0:
                continue
            tau = (alpha - icpt) / slope
            out.append((alpha, w * slope, w, -w * tau))
    return out


def _relu_witness(data: _Data, ray: tuple, a: np.ndarray, dtype) -> tuple[Features, float]:
    """Best hinge ``alpha + beta relu(w t + b)`` on the ray, as one ReLU feature."""
    c, d = ray
    cands = _hinges(data.t, a)
    al, be, w, b = (np.asarray(x) for x in zip(*cands, strict=True))
    fitted = al[:, None] + be[:, None] * np.maximum(w[:, None] * data.t + b[:, None], 0.0)
    best = None
    for i in np.argsort(np.max(np.abs(fitted - a), axis=1))[:4]:
        # errors are those of the parameters as stored (in the target's dtype)
        params = tuple(
            np.asarray(x, dtype).astype(np.float64)
            for x in (c + al[i] * d, (be[i] * d)[None], [w[i]], [b[i]])
        )
        err = _features_error(data, params)
        if best is None or err < best[1]:
            best = (params, err)
    params, err = best  # type: ignore[misc]
    return Features.create(*(jnp.asarray(x, dtype) for x in params)), err


def _features_error(data: _Data, params: tuple | Features) -> float:
    if len(data.full) < 2:
        return 0.0
    c, vecs, w, b = (np.asarray(x, np.float64) for x in params[:4])
    z = c + np.maximum(data.t[:, None] * w + b, 0.0) @ vecs
    return float(np.max(_osc_rows(z[:, data.full] - data.y[:, data.full])))


def single_feature_check(
    target: Target,
    tol: float,
    encoder: str = "relu",
    *,
    max_tokens: int = 64,
    use_fit: bool = True,
    fit_kwargs: dict | None = None,
) -> SingleFeatureCheck:
    r"""Decides, with a witness or a certificate, whether one feature is within ``tol`` of a target.

    ``tol`` is a sup-norm log-ratio error (see the module docstring): *representable* means some
    single feature has :math:`\max_t \max_{j,m} |\log(q_j/q_m) - \log(p_j/p_m)| \le` ``tol``,
    the same measure as :func:`turning_point_lower_bound` and :func:`piece_count_lower_bound`.

    Encoders:

    * ``"monotone"``: ``z(t) = c + a(t) l`` with any monotone ``a(t) >= 0``. Every log-ratio is
      then monotone in t, in the direction ``sign(l_j - l_m)``, and the centred log-probability path
      runs along one ray in order. Certificates: a ratio that reverses by more than ``2 tol``
      (three grid points, found for all token pairs by :func:`turning_point_lower_bound`), or three
      grid points whose middle one is more than ``2 tol`` (osc) from every point between the outer
      two: ``osc(y_2 - lam y_1 - (1 - lam) y_3) <= 2 tol`` for some ``lam in [0, 1]`` is necessary.
      Witness: a ray through the path (its chord or principal direction) with the sup-norm
      projections made monotone.
    * ``"relu"``: ``a(t) = relu(w t + b)``, a monotone encoder, so the certificates above apply;
      in addition the certified bound ``k >= 2`` from :func:`piece_count_lower_bound` (a single
      ReLU feature is affine on at most two blocks of the grid). Witness: a hinge fitted to the
      ray projections, then (if ``use_fit``) :func:`jaxfeat.fit` with ``k = 1``; a witness counts
      only if its sup log-ratio error, computed in float64, is at most ``tol``.

    The search for certificates and witnesses is not exhaustive: when neither is found the result
    is ``"undecided"`` (``representable=None``), never a guess.

    Args:
      target: the curve.
      tol: sup-norm log-ratio tolerance (>= 0).
      encoder: ``"relu"`` or ``"monotone"``.
      max_tokens: certificates use this many most probable full-support tokens (witness errors
        always use every full-support token).
      use_fit: try :func:`jaxfeat.fit` when the direct relu witness fails (it compiles once per
        shape).
      fit_kwargs: extra keyword arguments for :func:`jaxfeat.fit`.

    Returns:
      :class:`SingleFeatureCheck`.

    Example:
      >>> import jaxfeat
      >>> single_feature_check(jaxfeat.targets.temperature(), tol=1e-3).status
      'representable'
      >>> res = single_feature_check(jaxfeat.targets.temperature(nonmonotone=True), tol=0.1)
      >>> res.status, res.certificate.kind, res.certificate.tokens
      ('not_representable', 'reversal', (1, 0))
    """
    tol = _nonneg(tol, "tol")
    if encoder not in ("relu", "monotone"):
        raise ValueError(f"encoder={encoder!r} is unknown; use 'relu' or 'monotone'.")
    max_tokens = _validate.positive_int(max_tokens, "max_tokens")
    fit_kwargs = dict(fit_kwargs or {})
    if fit_kwargs.pop("activation", "relu") != "relu":
        raise ValueError(
            "fit_kwargs sets an activation other than 'relu'; the check is for ReLU "
            "features, drop the activation from fit_kwargs."
        )
    data = _prepare(target)
    dtype = target.probs.dtype

    def no(cert: Certificate) -> SingleFeatureCheck:
        return SingleFeatureCheck(
            False, "not_representable", None, float("inf"), cert, tol, encoder
        )

    tp = turning_point_lower_bound(target, tol, activation="relu", max_tokens=max_tokens)
    if tp.moves >= 2:
        y = data.y[:, tp.tokens[0]] - data.y[:, tp.tokens[1]]
        c3 = tuple(int(i) for i in tp.chain[:3])
        value = float(min(abs(y[c3[1]] - y[c3[0]]), abs(y[c3[2]] - y[c3[1]])))
        return no(Certificate("reversal", c3, tp.tokens, value))
    S = data.full[:max_tokens]
    if len(S) >= 2:
        ys = data.y[:, S] - data.y[:, S].mean(axis=1, keepdims=True)
        cert = _off_ray(ys, 2 * tol + 4 * _margin(ys, tol))
        if cert is not None:
            return no(cert)
    if encoder == "relu":
        pc = piece_count_lower_bound(target, tol, max_tokens=max_tokens)
        if pc.k >= 2:
            return no(
                Certificate("pieces", tuple(int(b) for b in pc.blocks[:, 0]), (), float(pc.k))
            )
    found = _ray_witness(data, dtype) if len(data.full) >= 2 else None
    if found is None:  # fewer than two full-support tokens: nothing to match
        T, V = data.y.shape
        if encoder == "monotone":
            wit = RayWitness(
                jnp.asarray(data.y[0], dtype), jnp.zeros(V, dtype), jnp.zeros(T, dtype)
            )
        else:
            wit = Features.create(
                jnp.asarray(data.y[0], dtype),
                jnp.zeros((1, V), dtype),
                jnp.zeros(1, dtype),
                jnp.zeros(1, dtype),
            )
        return SingleFeatureCheck(True, "representable", wit, 0.0, None, tol, encoder)
    ray_wit, ray_err, ray, a_raw = found
    candidates: list[tuple[Features | RayWitness, float]] = []
    if encoder == "monotone":
        candidates.append((ray_wit, ray_err))
    else:
        candidates.append(_relu_witness(data, ray, a_raw, dtype))
        if candidates[-1][1] > tol and use_fit:
            from ._fit import fit

            res = fit(target, 1, **fit_kwargs)
            candidates.append((res.params, _features_error(data, res.params)))
    witness, err = min(candidates, key=lambda x: x[1])
    if err <= tol:
        return SingleFeatureCheck(True, "representable", witness, err, None, tol, encoder)
    return SingleFeatureCheck(None, "undecided", None, float("inf"), None, tol, encoder)


# ---------------------------------------------------------------------------------------------
# Explicit constructions


def _unit(vocab: int, j: int, m: int) -> np.ndarray:
    vocab = _validate.positive_int(vocab, "vocab")
    if vocab < 2:
        raise ValueError(f"vocab={vocab} must be >= 2.")
    j = int(_token(j, vocab, "j"))
    m = int(_token(m, vocab, "m"))
    if j == m:
        raise ValueError(f"j and m are both {j}; give two different tokens.")
    u = np.zeros(vocab)
    u[j] = 1.0
    return u


def _features(c, coef, w, b, u) -> Features:
    dtype = jnp.result_type(float)
    return Features.create(
        jnp.asarray(c, dtype),
        jnp.asarray(np.outer(coef, u), dtype),
        jnp.asarray(w, dtype),
        jnp.asarray(b, dtype),
    )


def rise_then_fall(
    vocab: int = 2,
    j: int = 1,
    m: int = 0,
    knots: tuple[float, float] = (0.25, 0.625),
    height: float = 2.0,
) -> Features:
    r"""Two ReLU features with different thresholds whose ratio rises, then falls.

    .. math::

       \log \frac{P_j}{P_m}(t) = s \,\mathrm{relu}(t - \tau_1) - 2 s\, \mathrm{relu}(t - \tau_2),
       \qquad s = \frac{h}{\tau_2 - \tau_1},

    flat until :math:`\tau_1`, rising by h until :math:`\tau_2`, then falling at the same rate. No
    single feature does this (:func:`single_feature_check`); every other token stays at logit 0.

    Args:
      vocab: V >= 2.
      j: the token that rises then falls.
      m: the reference token.
      knots: thresholds ``tau_1 < tau_2``, in units of t (the natural grid is ``[0, 1]``).
      height: the rise h (> 0).

    Returns:
      :class:`~jaxfeat.Features` with k = 2.

    Example:
      >>> import jax.numpy as jnp
      >>> p = rise_then_fall()
      >>> log_ratio(p, 1, 0, t=jnp.array([0.0, 0.25, 0.625, 0.8125])).round(5)
      Array([0., 0., 2., 1.], dtype=float32)
    """
    u = _unit(vocab, j, m)
    t1, t2 = (float(x) for x in knots)
    if not t1 < t2:
        raise ValueError(f"knots={knots!r} must be increasing (tau_1 < tau_2).")
    s = _validate.positive_float(height, "height") / (t2 - t1)
    return _features(np.zeros(len(u)), [s, -2 * s], [1.0, 1.0], [-t1, -t2], u)


def zigzag_features(
    k: int,
    vocab: int = 2,
    j: int = 1,
    m: int = 0,
    knots: ArrayLike | None = None,
    slope: float = 1.0,
) -> Features:
    r"""k ReLU features whose log-ratio has :func:`max_turning_points` ``(k)`` turning points.

    For k >= 3 the slopes of ``log(P_j / P_m)`` on the k + 1 pieces are
    :math:`s (2, -1, 1, -1, \dots)`. Kink :math:`i^*`, the largest odd index <= k, is a feature
    active on the left, :math:`-2 s\,\mathrm{relu}(\tau_{i^*} - t)`, which carries the first slope
    2s and drops it there (slope change -2s); every other kink i is a feature active on the right,
    :math:`\Delta_i \mathrm{relu}(t - \tau_i)`, with the slope change
    :math:`\Delta_1 = -3s`, :math:`\Delta_i = 2 s (-1)^i`. For k = 2 it is :func:`rise_then_fall`
    (one turning point), for k = 1 a single hinge (none).

    Args:
      k: number of features (>= 1).
      vocab: V >= 2.
      j, m: the token pair.
      knots: k increasing thresholds; default ``i / (k + 1)``, i = 1..k (grid ``[0, 1]``).
      slope: s > 0.

    Returns:
      :class:`~jaxfeat.Features` with k features.

    Example:
      >>> import jax.numpy as jnp
      >>> t = jnp.linspace(0.0, 1.0, 101)
      >>> turning_points(log_ratio(zigzag_features(4), 1, 0, t=t), tol=1e-4)
      4
    """
    k = _validate.positive_int(k, "k")
    u = _unit(vocab, j, m)
    s = _validate.positive_float(slope, "slope")
    tau = np.arange(1, k + 1) / (k + 1) if knots is None else np.asarray(knots, np.float64)
    if tau.shape != (k,) or not np.all(np.isfinite(tau)) or np.any(np.diff(tau) <= 0):
        raise ValueError(f"knots must be {k} finite increasing thresholds, got {knots!r}.")
    if k == 1:
        return _features(np.zeros(len(u)), [s], [1.0], [-tau[0]], u)
    if k == 2:
        return _features(np.zeros(len(u)), [s, -2 * s], [1.0, 1.0], [-tau[0], -tau[1]], u)
    istar = k if k % 2 else k - 1
    coef, w, b = [], [], []
    for i in range(1, k + 1):
        if i == istar:
            coef.append(-2 * s)
            w.append(-1.0)
            b.append(tau[i - 1])
        else:
            coef.append(-3 * s if i == 1 else 2 * s * (-1) ** i)
            w.append(1.0)
            b.append(-tau[i - 1])
    return _features(np.zeros(len(u)), coef, w, b, u)
