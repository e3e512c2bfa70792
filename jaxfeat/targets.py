"""A library of target curves: the two worked examples and parametric families.

Every constructor returns a :class:`jaxfeat.Target`. Grids and logits are built in float64 NumPy and
converted to JAX's default float type, so the same call gives the same target on every backend.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from . import _validate
from ._target import Target

HTML_TOKENS = ("\n", "\n\n", "<", " ", "the", ".", ",", "and")


def html_closing_tag(p_on: tuple[float, float, float] = (0.6, 0.25, 0.12)) -> Target:
    """The binary example: the next-token distribution after an HTML ``</p>`` tag.

    The latent is binary, ``t in {0, 1}`` (feature off or on). Off, the next token follows a
    base distribution over ordinary text tokens. On, three tokens (``"\\n"``, ``"\\n\\n"``, ``"<"``)
    take almost all the mass in fixed ratios and the other five share what is left in the ratios
    they have when the feature is off, so every probability stays positive and one feature
    reproduces the target exactly.

    Args:
      p_on: probabilities of the three tag-following tokens when the feature is on; three
        positive numbers whose sum is below 1.

    Returns:
      Target with T = 2, V = 8 and token names.

    Example:
      >>> tgt = html_closing_tag()
      >>> tgt.num_points, tgt.vocab, tgt.tokens[2:5]
      (2, 8, ('<', ' ', 'the'))
    """
    try:
        on3 = np.asarray(p_on, dtype=np.float64)
    except (TypeError, ValueError):
        on3 = np.full(3, np.nan)
    if on3.shape != (3,) or not np.all(np.isfinite(on3) & (on3 > 0)) or on3.sum() >= 1:
        raise ValueError(f"p_on={p_on!r} must be three positive probabilities summing to < 1.")
    off = np.array([0.06, 0.01, 0.02, 0.30, 0.25, 0.16, 0.12, 0.08])
    rest = off[3:] / off[3:].sum() * (1.0 - on3.sum())
    on = np.concatenate([on3, rest])
    return Target(np.array([0.0, 1.0]), np.stack([off, on]).astype(_float()), HTML_TOKENS)


TEMPERATURE_TOKENS = ("cold", "mild", "hot")


def temperature(nonmonotone: bool = False, n: int = 101) -> Target:
    """The continuous example: "cold" / "mild" / "hot" as the day's temperature rises.

    The latent is the temperature in degrees Celsius on ``[-10, 40]``.

    * ``nonmonotone=False``: logits ``(-1, 0, 1) * (t - 15) / 5``, a straight logit ray. Cold
      falls, hot rises, mild peaks once at 15 C; every probability ratio is monotone, and one
      feature whose encoder is active on the whole range reproduces it exactly.
    * ``nonmonotone=True``: cold and hot stay linear, ``-(t - 10) / 4`` and ``(t - 26) / 4``,
      but "mild" is a bump, ``2 - ((t - 18) / 6)^2``, so ``log(P_mild / P_cold)`` rises until
      22.5 C and then falls. No single feature, whatever its encoder, can produce a ratio that
      rises then falls.

    Args:
      nonmonotone: which variant.
      n: number of grid points, n >= 2.

    Returns:
      Target with T = n, V = 3 and tokens ("cold", "mild", "hot").

    Example:
      >>> temperature().tokens
      ('cold', 'mild', 'hot')
    """
    n = _grid_size(n)
    t = np.linspace(-10.0, 40.0, n)
    if nonmonotone:
        z = np.stack([-(t - 10) / 4, 2 - ((t - 18) / 6) ** 2, (t - 26) / 4], axis=1)
    else:
        z = np.outer((t - 15) / 5, [-1.0, 0.0, 1.0])
    return _from_logits(t, z, TEMPERATURE_TOKENS)


def oscillating(m: float, n: int = 256, vocab: int = 3) -> Target:
    """Logits that oscillate m times on ``t in [0, 1]``.

    For ``vocab=3`` the logits are exactly ``(0, 3 sin 2 pi m t, 2 cos 2 pi m t)``. Larger
    vocabularies add tokens ``j >= 3`` with logits ``2 sin(2 pi m t + 2 pi j / vocab)``, so the
    complexity per token stays that of m oscillations.

    Args:
      m: number of oscillations (> 0).
      n: grid points, n >= 2.
      vocab: V >= 3.

    Returns:
      Target with T = n, V = vocab.

    Example:
      >>> oscillating(2).probs.shape
      (256, 3)
    """
    m = _validate.positive_float(m, "m")
    n = _grid_size(n)
    vocab = _int_at_least(vocab, "vocab", 3)
    t = np.linspace(0.0, 1.0, n)
    ph = 2 * np.pi * m * t
    cols = [np.zeros_like(t), 3 * np.sin(ph), 2 * np.cos(ph)]
    cols += [2 * np.sin(ph + 2 * np.pi * j / vocab) for j in range(3, vocab)]
    return _from_logits(t, np.stack(cols, axis=1))


def tuning_curves(n_tokens: int, width: float, n: int = 256, height: float = 4.0) -> Target:
    """Each token's logit is a Gaussian bump peaking at its own latent value.

    Token j has logit ``height * exp(-(t - mu_j)^2 / (2 width^2))`` with ``mu_j`` evenly spaced on
    ``[0, 1]``: like place cells, the latent's value is read off which token is most likely.

    Args:
      n_tokens: V >= 2.
      width: bump width in units of t (> 0).
      n: grid points, n >= 2.
      height: peak logit (> 0).

    Returns:
      Target with T = n, V = n_tokens.

    Example:
      >>> tuning_curves(5, 0.1).vocab
      5
    """
    n_tokens = _int_at_least(n_tokens, "n_tokens", 2)
    width = _validate.positive_float(width, "width")
    n = _grid_size(n)
    height = _validate.positive_float(height, "height")
    t = np.linspace(0.0, 1.0, n)
    mu = np.linspace(0.0, 1.0, n_tokens)
    return _from_logits(t, height * np.exp(-((t[:, None] - mu) ** 2) / (2 * width**2)))


def random_smooth(
    key: jax.Array | int, bandwidth: int, vocab: int, n: int = 256, scale: float = 2.0
) -> Target:
    """Random smooth logit curves: Fourier series with ``bandwidth`` frequencies per token.

    Token v has logit ``scale * sum_{f=1..B} (a_vf cos 2 pi f t + b_vf sin 2 pi f t) / sqrt(B)``
    with standard normal coefficients, so the logit variance is ``scale^2`` for every bandwidth
    while the number of oscillations, and with it the complexity, grows with B.

    Args:
      key: a JAX PRNG key (a typed key, or a legacy ``uint32`` key of shape (2,)) or an integer
        seed; the same key always gives the same target.
      bandwidth: B >= 1, the highest frequency.
      vocab: V >= 2.
      n: grid points, n >= 2.
      scale: logit standard deviation (>= 0).

    Returns:
      Target with T = n, V = vocab.

    Example:
      >>> random_smooth(0, bandwidth=3, vocab=4).probs.shape
      (256, 4)
    """
    B = _validate.positive_int(bandwidth, "bandwidth")
    vocab = _int_at_least(vocab, "vocab", 2)
    n = _grid_size(n)
    scale = _nonnegative_float(scale, "scale")
    key = _prng_key(key)
    coef = np.asarray(jax.random.normal(key, (2, B, vocab)), dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)
    ph = 2 * np.pi * np.outer(t, np.arange(1, B + 1))
    z = scale * (np.cos(ph) @ coef[0] + np.sin(ph) @ coef[1]) / np.sqrt(B)
    return _from_logits(t, z)


def _int_at_least(value: object, name: str, low: int, why: str = "") -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value < low:
        raise ValueError(f"{name}={value!r} must be at least {low}{why}.")
    return _validate.positive_int(value, name)


def _grid_size(n: object) -> int:
    return _int_at_least(n, "n", 2, " (a grid needs two points)")


def _nonnegative_float(value: object, name: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        x = np.nan
    if not (np.isfinite(x) and x >= 0):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0.")
    return x


def _prng_key(key: object) -> jax.Array:
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        if not -(2**63) <= int(key) < 2**63:
            raise ValueError(f"key={key!r} is out of range for a seed; use a 64-bit integer.")
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key  # type: ignore[return-value]
    elif dtype is not None and np.dtype(dtype) == np.uint32 and shape == (2,):
        return key  # type: ignore[return-value]
    got = f"an array of shape {shape} and dtype {dtype}" if dtype is not None else repr(key)
    raise ValueError(
        f"key must be an integer seed or a single JAX PRNG key (jax.random.key(seed)); got {got}."
    )


def _float() -> type:
    return np.float64 if jax.config.jax_enable_x64 else np.float32


def _from_logits(t: np.ndarray, z: np.ndarray, tokens=None) -> Target:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return Target(t.astype(_float()), p.astype(_float()), tokens, normalize=True)
