"""Small array helpers shared by the fitting engine and the bounds."""

from __future__ import annotations

import jax


def bcast(flag: jax.Array, x: jax.Array) -> jax.Array:
    """``flag`` with trailing unit axes, to select between leaves of ``x``'s rank."""
    return flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim))


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): padded sizes that share compilations."""
    return 1 << max(int(n) - 1, 0).bit_length()


def x64():
    """A context in which JAX computes in float64 (``jax.enable_x64`` on JAX >= 0.8)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        return ctx(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()
