"""Input checks that run before any tracing and say what to do.

Every check is skipped for values that are JAX tracers (a user calling from inside ``jit`` or
``vmap``): shapes are still checked there, values cannot be.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ._model import ACTIVATIONS

# Encoders whose logits are piecewise affine in t: the ones the certified bounds hold for.
BOUND_ACTIVATIONS = ("relu", "jumprelu")


def is_traced(*xs: object) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be at least 1.")
    return int(value)


def nonnegative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0.")
    return int(value)


def boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False.")
    return value


def positive_float(value: object, name: str) -> float:
    return _number(value, name, "> 0")


def nonnegative_float(value: object, name: str) -> float:
    return _number(value, name, ">= 0")


def _number(value: object, name: str, sign: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a number {sign}.") from None
    if not np.isfinite(x) or (x <= 0 if sign == "> 0" else x < 0):
        raise ValueError(f"{name}={value!r} must be a finite number {sign}.")
    return x


def activation(value: str) -> str:
    return _activation(value, ACTIVATIONS, "is unknown")


def bound_activation(value: str) -> str:
    return _activation(
        value,
        BOUND_ACTIVATIONS,
        "has no certified bound: the bounds need piecewise-affine encoders",
    )


def _activation(value: str, choices: tuple[str, ...], why: str) -> str:
    if value not in choices:
        raise ValueError(f"activation={value!r} {why}; use one of {', '.join(map(repr, choices))}.")
    return value


def grid(t: object, name: str = "t") -> None:
    shape = np.shape(t)
    if len(shape) != 1:
        raise ValueError(f"{name} must be a 1-D grid of latent values, got shape {shape}.")
    if shape[0] < 2:
        raise ValueError(f"{name} has {shape[0]} point(s); a grid needs at least 2.")
    if is_traced(t):
        return
    a = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; remove those grid points.")
    d = np.diff(a)
    if np.any(d == 0):
        raise ValueError(f"{name} has duplicate points; merge them (average their distributions).")
    if np.any(d < 0):
        raise ValueError(
            f"{name} is not increasing; sort it and reorder the distributions with the same "
            "permutation (order = np.argsort(t))."
        )


def simplex_rows(
    probs: object, name: str = "probs", *, atol: float | None = None, normalize: bool = False
) -> np.ndarray | None:
    """Checks rows on the simplex; returns the renormalised rows when ``normalize`` is set."""
    shape = np.shape(probs)
    if len(shape) < 1 or shape[-1] < 2:
        raise ValueError(f"{name} has shape {shape}; the last axis is the vocabulary, V >= 2.")
    if is_traced(probs):
        return None
    p = np.asarray(probs)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf; every entry must be a finite probability.")
    if np.any(p < 0):
        raise ValueError(f"{name} has negative entries; probabilities must be >= 0.")
    sums = p.sum(axis=-1, dtype=np.float64)
    if np.any(sums <= 0):
        raise ValueError(f"{name} has an all-zero row; each row must be a distribution.")
    if normalize:
        return (p / sums[..., None]).astype(p.dtype if p.dtype.kind == "f" else np.float32)
    if atol is None:
        eps = np.finfo(p.dtype).eps if p.dtype.kind == "f" else np.finfo(np.float32).eps
        atol = max(1e-6, 8 * shape[-1] * float(eps))
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > atol:
        raise ValueError(
            f"{name} rows must sum to 1 (worst row is off by {worst:.3g}); "
            "pass normalize=True to renormalise them."
        )
    return None


def matching_grid(t: object, probs: object, probs_name: str = "probs") -> None:
    T = np.shape(t)[0]
    shape = np.shape(probs)
    if len(shape) < 2 or shape[-2] != T:
        raise ValueError(
            f"{probs_name} has shape {shape} but t has {T} points; {probs_name} must be "
            f"(..., T, V) "
            f"with T = {T}."
        )


def float_array(x: object, name: str) -> jax.Array:
    """``x`` as a JAX float array: integers take the default float dtype, half precision float32.

    Half precision (float16, bfloat16) has about three significant digits: KL values and
    Gauss-Newton systems in it would be rounding noise, so it is computed in float32.
    """
    a = jnp.asarray(x)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return a.astype(jnp.result_type(float))
    if jnp.finfo(a.dtype).bits < 32:
        return a.astype(jnp.float32)
    return a


def target(value: object) -> object:
    """Checks that ``value`` is a :class:`jaxfeat.Target` (validated when it was built)."""
    from ._target import Target  # _target imports this module

    if not isinstance(value, Target):
        raise ValueError(
            f"target must be a jaxfeat.Target, got {type(value).__name__}; wrap arrays with "
            "jaxfeat.Target(t, probs) or use fit_batch."
        )
    return value
