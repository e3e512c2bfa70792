"""Shared test helpers."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxfeat
from jaxfeat._arrays import x64 as x64  # re-exported for the tests


def random_features(key, k: int, vocab: int, scale: float = 1.0, t_range=(0.0, 1.0)):
    """Random ReLU features whose knots fall inside ``t_range`` (so every feature matters)."""
    kc, kl, kw, kt = jax.random.split(jax.random.key(key) if isinstance(key, int) else key, 4)
    lo, hi = t_range
    knots = jax.random.uniform(kt, (k,), minval=lo + 0.1 * (hi - lo), maxval=hi - 0.1 * (hi - lo))
    w = jnp.where(jax.random.bernoulli(kw, 0.5, (k,)), 1.0, -1.0) / (hi - lo)
    return jaxfeat.Features.create(
        c=jax.random.normal(kc, (vocab,)),
        l=scale * 4 * jax.random.normal(kl, (k, vocab)),
        w=w,
        b=-w * knots,
    )


def numpy_kl(p, q):
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    pos = p > 0
    return np.sum(np.where(pos, p * (np.log(np.where(pos, p, 1)) - np.log(q)), 0.0), axis=-1)
