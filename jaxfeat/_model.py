"""The linear-logit feature model: k features of a scalar latent acting on V next-token logits."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

ACTIVATIONS = ("relu", "jumprelu", "softplus")


class Features(NamedTuple):
    r"""Parameters of k linear logit features of a scalar latent t.

    The model is ``z(t) = c + sum_i a_i(t) l_i`` and ``q(t) = softmax(z(t))`` with encoder
    pre-activation ``x_i(t) = w_i t + b_i`` and

    * ``relu``:     :math:`a_i = \max(x_i, 0)`
    * ``jumprelu``: :math:`a_i = x_i \, 1[x_i > \theta_i]`
    * ``softplus``: :math:`a_i = \log(1 + e^{x_i})`

    Attributes:
      c: (V,) logits that do not depend on the features (the "other logits").
      l: (k, V) logit vector of each feature.
      w: (k,) encoder slopes.
      b: (k,) encoder biases.
      theta: (k,) JumpReLU thresholds; ignored by the other activations.

    Example:
      >>> import jax.numpy as jnp
      >>> p = Features.create(c=jnp.zeros(3), l=jnp.array([[-1.0, 0.0, 1.0]]),
      ...                     w=jnp.ones(1), b=jnp.zeros(1))
      >>> p.num_features, p.vocab
      (1, 3)
    """

    c: jax.Array
    l: jax.Array
    w: jax.Array
    b: jax.Array
    theta: jax.Array

    @classmethod
    def create(
        cls,
        c: ArrayLike,
        l: ArrayLike,
        w: ArrayLike,
        b: ArrayLike,
        theta: ArrayLike | None = None,
    ) -> Features:
        """Builds parameters, filling ``theta`` with zeros when it is not given."""
        c, l, w, b = (jnp.asarray(x) for x in (c, l, w, b))
        theta = jnp.zeros_like(w) if theta is None else jnp.asarray(theta)
        return cls(c, l, w, b, theta)

    @property
    def num_features(self) -> int:
        return self.l.shape[-2]

    @property
    def vocab(self) -> int:
        return self.c.shape[-1]


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is unknown; use one of {', '.join(map(repr, ACTIVATIONS))}."
        )


def activations(params: Features, t: ArrayLike, activation: str = "relu") -> jax.Array:
    """Feature activations on a grid of latent values.

    Args:
      params: the features (k of them).
      t: (T,) latent values.
      activation: ``"relu"``, ``"jumprelu"`` or ``"softplus"``.

    Returns:
      (T, k) activations ``a_i(t)``.

    Example:
      >>> import jax.numpy as jnp
      >>> p = Features.create(jnp.zeros(2), jnp.ones((1, 2)), jnp.ones(1), -jnp.ones(1))
      >>> activations(p, jnp.array([0.0, 1.0, 3.0]))
      Array([[0.],
             [0.],
             [2.]], dtype=float32)
    """
    _check_activation(activation)
    x = jnp.asarray(t)[:, None] * params.w + params.b
    if activation == "relu":
        return jax.nn.relu(x)
    if activation == "softplus":
        return jax.nn.softplus(x)
    return jnp.where(x > params.theta, x, 0.0)


def logits(params: Features, t: ArrayLike, activation: str = "relu") -> jax.Array:
    """Next-token logits ``z(t) = c + a(t) @ l``.

    Args:
      params: the features.
      t: (T,) latent values.
      activation: see :func:`activations`.

    Returns:
      (T, V) logits.

    Example:
      >>> import jax.numpy as jnp
      >>> p = Features.create(jnp.zeros(2), jnp.array([[0.0, 1.0]]), jnp.ones(1), jnp.zeros(1))
      >>> logits(p, jnp.array([0.0, 2.0]))
      Array([[0., 0.],
             [0., 2.]], dtype=float32)
    """
    return params.c + activations(params, t, activation) @ params.l


def log_probs(params: Features, t: ArrayLike, activation: str = "relu") -> jax.Array:
    """Log next-token probabilities ``log softmax(z(t))``, shape (T, V).

    Example:
      >>> import jax.numpy as jnp
      >>> p = Features.create(jnp.zeros(2), jnp.zeros((1, 2)), jnp.ones(1), jnp.zeros(1))
      >>> jnp.exp(log_probs(p, jnp.array([0.5])))
      Array([[0.5, 0.5]], dtype=float32)
    """
    return jax.nn.log_softmax(logits(params, t, activation), axis=-1)


def probs(params: Features, t: ArrayLike, activation: str = "relu") -> jax.Array:
    """Next-token probabilities ``softmax(z(t))``, shape (T, V).

    Example:
      >>> import jax.numpy as jnp
      >>> p = Features.create(jnp.zeros(2), jnp.zeros((1, 2)), jnp.ones(1), jnp.zeros(1))
      >>> probs(p, jnp.array([0.5]))
      Array([[0.5, 0.5]], dtype=float32)
    """
    return jax.nn.softmax(logits(params, t, activation), axis=-1)


def kl(target_probs: ArrayLike, log_q: ArrayLike) -> jax.Array:
    r"""Kullback-Leibler divergence :math:`\mathrm{KL}(p \| q) = \sum_v p_v (\log p_v - \log q_v)`.

    Exact for targets with zero entries (``0 log 0 = 0``); the gradient in ``log_q`` is ``-p``,
    finite everywhere, because ``log p`` is never evaluated at 0.

    Args:
      target_probs: (..., V) target probabilities p.
      log_q: (..., V) model log-probabilities (e.g. from :func:`log_probs`).

    Returns:
      (...,) KL in nats, one per row.

    Example:
      >>> import jax.numpy as jnp
      >>> kl(jnp.array([1.0, 0.0]), jnp.log(jnp.array([0.5, 0.5])))
      Array(0.6931472, dtype=float32)
    """
    p = jnp.asarray(target_probs)
    log_q = jnp.asarray(log_q)
    positive = p > 0
    log_p = jnp.log(jnp.where(positive, p, 1.0))
    return jnp.sum(jnp.where(positive, p * (log_p - log_q), 0.0), axis=-1)


def mean_kl(
    params: Features, t: ArrayLike, target_probs: ArrayLike, activation: str = "relu"
) -> jax.Array:
    """The default loss: mean over the grid of ``KL(p(t) || q(t))`` in nats.

    Args:
      params: the features.
      t: (T,) grid.
      target_probs: (T, V) target distributions.
      activation: see :func:`activations`.

    Returns:
      Scalar mean KL.

    Example:
      >>> import jax.numpy as jnp
      >>> p = Features.create(jnp.zeros(2), jnp.zeros((1, 2)), jnp.ones(1), jnp.zeros(1))
      >>> mean_kl(p, jnp.array([0.0, 1.0]), jnp.full((2, 2), 0.5))
      Array(0., dtype=float32)
    """
    return jnp.mean(kl(target_probs, log_probs(params, t, activation)))


# Tokens far below a row's most likely one carry almost no KL weight, but their log-probabilities
# would dominate a least-squares fit or a finite difference of log p; clipping them this many nats
# below the row's largest log-probability keeps every value finite and their pull bounded.
LOG_DEPTH = 30.0


def clipped_log_probs(p: ArrayLike, depth: float = LOG_DEPTH) -> jax.Array | np.ndarray:
    """Log-probabilities clipped ``depth`` nats below each row's maximum (exact zeros included).

    NumPy arrays stay NumPy (host-side float64 code); anything else goes through ``jax.numpy``.

    Args:
      p: (..., V) probabilities.
      depth: nats below the row's largest log-probability where values are clipped.

    Returns:
      (..., V) clipped log-probabilities.

    Example:
      >>> import numpy as np
      >>> clipped_log_probs(np.array([1.0, 0.0]), depth=5.0)
      array([ 0., -5.])
    """
    xp = np if isinstance(p, np.ndarray) else jnp
    p = xp.asarray(p)
    z = xp.log(xp.maximum(p, xp.finfo(p.dtype).tiny))
    return xp.maximum(z, xp.max(z, axis=-1, keepdims=True) - depth)
