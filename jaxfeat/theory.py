r"""What one linear logit feature can and cannot do, and what k of them can.

Three kinds of functions live here; the certified lower bounds built on them are in
:mod:`jaxfeat.bounds`.

* Pure JAX functions for the single-feature laws, jit-able like optax losses:
  :func:`log_ratio`, :func:`single_feature_ratio_rate`, :func:`binary_feature`,
  :func:`ignored_bias_bounds`, :func:`token_peak_activation`.
* Host-side checks on a :class:`~jaxfeat.Target` that return certificates, computed in float64
  NumPy outside ``jit``: :func:`turning_points`, :func:`max_turning_points`,
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

from . import _logratio, _validate
from ._fit import fit
from ._model import Features
from ._model import logits as _logits
from ._target import Target

PEAK_STATUS = ("peaked", "rising", "falling")
"""Names of :attr:`PeakActivation.status` codes 0, 1, 2."""


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


def turning_points(y: ArrayLike, threshold: float = 0.0) -> int | np.ndarray:
    r"""Number of turning points of a sampled curve (or of each column).

    With ``threshold = 0`` these are the sign changes of the slope sequence ``y[i+1] - y[i]`` after
    deleting zero slopes: the minimum number of monotone pieces minus one. Endpoints never count; a
    plateau between a rise and a fall counts once; a terrace (rise, flat, rise) not at all.

    With ``threshold > 0`` the count has hysteresis: a change of direction counts only once the
    curve has moved by more than ``threshold`` from its last extreme, so wiggles of size
    ``threshold`` or less are ignored. Equivalently, it is ``n - 1`` for the longest chain of grid
    points whose ``n`` successive increments alternate in sign and each exceed ``threshold`` (0
    when no increment does).

    Args:
      y: (T,) curve, or (T, ...) for one count per trailing index.
      threshold: wiggle size to ignore (>= 0), in the units of y.

    Returns:
      An ``int`` for a 1-D curve, an integer array of the trailing shape otherwise.

    Example:
      >>> turning_points([0.0, 1.0, 1.0, 0.0])     # plateau between rise and fall
      1
      >>> turning_points([0.0, 1.0, 1.0, 2.0])     # terrace
      0
      >>> turning_points([0.0, 1.0, 0.9, 2.0, 0.0], threshold=0.2)
      1
    """
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"y must be a curve of shape (T,) or (T, ...), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("y contains NaN or inf; turning points need a finite curve.")
    threshold = _validate.nonnegative_float(threshold, "threshold")
    flat = arr.reshape(arr.shape[0], -1)
    counts = np.maximum(_logratio.alternating_moves(flat, threshold) - 1, 0).reshape(arr.shape[1:])
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
    _validate.bound_activation(activation)
    if activation == "relu" and k in (1, 2):
        return int(k) - 1
    return int(k)


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
    data = _logratio.prepare(target)
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
    """Why a target is not within ``delta`` of any single feature.

    Attributes:
      kind: ``"reversal"``: the log-ratio of ``tokens`` rises by more than ``2 delta`` between
        ``points[0]`` and ``points[1]`` and falls by more than ``2 delta`` between ``points[1]`` and
        ``points[2]`` (a single feature with a monotone activation makes every ratio monotone).
        ``"off_ray"``: no point of the segment between the centred log-probabilities at
        ``points[0]`` and ``points[2]`` is within ``2 delta`` (in osc) of the one at ``points[1]``
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
      representable: ``True`` (a witness within ``delta`` was found), ``False`` (a certificate
        proves none exists), or ``None`` (undecided: neither was found).
      status: ``"representable"``, ``"not_representable"`` or ``"undecided"``.
      witness: :class:`~jaxfeat.Features` (relu) or :class:`RayWitness` (monotone) when found.
      error: sup-norm log-ratio error of the witness (``inf`` without one).
      certificate: :class:`Certificate` when not representable.
      delta: the tolerance.
      encoder: ``"relu"`` or ``"monotone"``.
    """

    representable: bool | None
    status: str
    witness: Features | RayWitness | None
    error: float
    certificate: Certificate | None
    delta: float
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


def _ray_witness(
    data: _logratio.LogRatioData, dtype
) -> tuple[RayWitness, float, tuple, np.ndarray]:
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


def _relu_witness(
    data: _logratio.LogRatioData, ray: tuple, a: np.ndarray, dtype
) -> tuple[Features, float]:
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


def _features_error(data: _logratio.LogRatioData, params: tuple | Features) -> float:
    if len(data.full) < 2:
        return 0.0
    c, vecs, w, b = (np.asarray(x, np.float64) for x in params[:4])
    z = c + np.maximum(data.t[:, None] * w + b, 0.0) @ vecs
    return float(np.max(_osc_rows(z[:, data.full] - data.y[:, data.full])))


def single_feature_check(
    target: Target,
    delta: float,
    encoder: str = "relu",
    *,
    max_tokens: int = 64,
    use_fit: bool = True,
    restarts: int = 16,
    key: int = 0,
) -> SingleFeatureCheck:
    r"""Decides, with a witness or a certificate, whether one feature is within ``delta`` of a
    target.

    ``delta`` is a sup-norm log-ratio error (see the module docstring): *representable* means some
    single feature has :math:`\max_t \max_{j,m} |\log(q_j/q_m) - \log(p_j/p_m)| \le` ``delta``,
    the same measure as :func:`turning_point_lower_bound` and :func:`piece_count_lower_bound`.

    Encoders:

    * ``"monotone"``: ``z(t) = c + a(t) l`` with any monotone ``a(t) >= 0``. Every log-ratio is
      then monotone in t, in the direction ``sign(l_j - l_m)``, and the centred log-probability path
      runs along one ray in order. Certificates: a ratio that reverses by more than ``2 delta``
      (three grid points, found for all token pairs by :func:`turning_point_lower_bound`), or three
      grid points whose middle one is more than ``2 delta`` (osc) from every point between the outer
      two: ``osc(y_2 - lam y_1 - (1 - lam) y_3) <= 2 delta`` for some ``lam in [0, 1]`` is
      necessary.
      Witness: a ray through the path (its chord or principal direction) with the sup-norm
      projections made monotone.
    * ``"relu"``: ``a(t) = relu(w t + b)``, a monotone encoder, so the certificates above apply;
      in addition the certified bound ``k >= 2`` from :func:`piece_count_lower_bound` (a single
      ReLU feature is affine on at most two blocks of the grid). Witness: a hinge fitted to the
      ray projections, then (if ``use_fit``) :func:`jaxfeat.fit` with ``k = 1``; a witness counts
      only if its sup log-ratio error, computed in float64, is at most ``delta``.

    The search for certificates and witnesses is not exhaustive: when neither is found the result
    is ``"undecided"`` (``representable=None``), never a guess.

    Args:
      target: the curve.
      delta: sup-norm log-ratio tolerance (>= 0).
      encoder: ``"relu"`` or ``"monotone"``.
      max_tokens: certificates use this many most probable full-support tokens (witness errors
        always use every full-support token).
      use_fit: try :func:`jaxfeat.fit` when the direct relu witness fails (it compiles once per
        shape).
      restarts: restarts of that fit.
      key: seed of that fit.

    Returns:
      :class:`SingleFeatureCheck`.

    Example:
      >>> import jaxfeat
      >>> single_feature_check(jaxfeat.targets.temperature(), delta=1e-3).status
      'representable'
      >>> res = single_feature_check(jaxfeat.targets.temperature(nonmonotone=True), delta=0.1)
      >>> res.status, res.certificate.kind, res.certificate.tokens
      ('not_representable', 'reversal', (1, 0))
    """
    delta = _validate.nonnegative_float(delta, "delta")
    if encoder not in ("relu", "monotone"):
        raise ValueError(f"encoder={encoder!r} is unknown; use 'relu' or 'monotone'.")
    max_tokens = _validate.positive_int(max_tokens, "max_tokens")
    restarts = _validate.positive_int(restarts, "restarts")
    data = _logratio.prepare(target)
    dtype = target.probs.dtype

    def no(cert: Certificate) -> SingleFeatureCheck:
        return SingleFeatureCheck(
            False, "not_representable", None, float("inf"), cert, delta, encoder
        )

    from . import bounds  # not at import time: the bounds build on this module's theorems

    tp = bounds.turning_point_lower_bound(target, delta, activation="relu", max_tokens=max_tokens)
    if tp.moves >= 2:
        y = data.y[:, tp.tokens[0]] - data.y[:, tp.tokens[1]]
        c3 = tuple(int(i) for i in tp.chain[:3])
        value = float(min(abs(y[c3[1]] - y[c3[0]]), abs(y[c3[2]] - y[c3[1]])))
        return no(Certificate("reversal", c3, tp.tokens, value))
    S = data.full[:max_tokens]
    if len(S) >= 2:
        ys = data.y[:, S] - data.y[:, S].mean(axis=1, keepdims=True)
        cert = _off_ray(ys, 2 * delta + 4 * _logratio.margin(ys, delta))
        if cert is not None:
            return no(cert)
    if encoder == "relu":
        pc = bounds.piece_count_lower_bound(target, delta, max_tokens=max_tokens)
        if pc.lower_bound >= 2:
            return no(
                Certificate(
                    "pieces", tuple(int(b) for b in pc.blocks[:, 0]), (), float(pc.lower_bound)
                )
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
        return SingleFeatureCheck(True, "representable", wit, 0.0, None, delta, encoder)
    ray_wit, ray_err, ray, a_raw = found
    candidates: list[tuple[Features | RayWitness, float]] = []
    if encoder == "monotone":
        candidates.append((ray_wit, ray_err))
    else:
        candidates.append(_relu_witness(data, ray, a_raw, dtype))
        if candidates[-1][1] > delta and use_fit:
            res = fit(target, 1, restarts=restarts, key=key)
            candidates.append((res.params, _features_error(data, res.params)))
    witness, err = min(candidates, key=lambda x: x[1])
    if err <= delta:
        return SingleFeatureCheck(True, "representable", witness, err, None, delta, encoder)
    return SingleFeatureCheck(None, "undecided", None, float("inf"), None, delta, encoder)


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
      >>> turning_points(log_ratio(zigzag_features(4), 1, 0, t=t), threshold=1e-4)
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
