"""Target curves: next-token distributions p(t) on a grid of latent values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """Target next-token distributions p(t) on a strictly increasing grid.

    ``t`` is stored in the float type of ``probs``. Integer (and boolean) inputs become JAX's
    default float type; half-precision inputs are stored as float32: float16 and bfloat16 rows are
    checked against a tolerance for their own precision and then renormalised in float32, so the
    stored rows sum to 1 at float32 precision.

    Args:
      t: (T,) strictly increasing latent values, T >= 2.
      probs: (T, V) rows on the simplex, V >= 2. Exact zeros are allowed.
      tokens: optional V token names, for tables and figures.
      normalize: renormalise rows that do not sum to 1 instead of raising.

    Raises:
      ValueError: for NaN/inf, negative entries, rows off the simplex, an unsorted or duplicated
        grid, fewer than 2 grid points or tokens, or mismatched shapes.

    Example:
      >>> import numpy as np
      >>> tgt = Target([0.0, 1.0], [[0.5, 0.5], [0.9, 0.1]], tokens=("yes", "no"))
      >>> tgt.num_points, tgt.vocab
      (2, 2)
      >>> Target(np.float16([0, 1]), np.float16([[0.5, 0.5], [0.9, 0.1]])).probs.dtype
      dtype('float32')
    """

    t: jax.Array
    probs: jax.Array
    tokens: tuple[str, ...] | None = None

    def __init__(
        self,
        t: ArrayLike,
        probs: ArrayLike,
        tokens: Sequence[str] | None = None,
        *,
        normalize: bool = False,
    ) -> None:
        _validate.grid(t, "t")
        _validate.matching_grid(t, probs)
        if np.ndim(probs) != 2:
            raise ValueError(f"probs must be (T, V), got shape {np.shape(probs)}.")
        in_dtype = _dtype_of(probs)
        dtype = _storage_dtype(in_dtype)
        upcast = dtype != in_dtype and jnp.issubdtype(in_dtype, jnp.floating)
        if dtype != in_dtype:
            if _validate.is_traced(probs):
                probs = jnp.asarray(probs).astype(dtype)
            else:
                probs = np.asarray(probs).astype(dtype)
        if upcast and not normalize:
            # Half-precision rows are checked at their own precision, then renormalised below so
            # that the stored float32 rows sum to 1 at float32 precision.
            eps = float(jnp.finfo(in_dtype).eps)
            _validate.simplex_rows(probs, "probs", atol=max(1e-6, 8 * np.shape(probs)[1] * eps))
        fixed = _validate.simplex_rows(probs, "probs", normalize=normalize or upcast)
        probs = jnp.asarray(fixed if fixed is not None else probs)
        t = jnp.asarray(t, dtype=probs.dtype)
        if tokens is not None:
            tokens = tuple(str(s) for s in tokens)
            if len(tokens) != probs.shape[1]:
                raise ValueError(
                    f"tokens has {len(tokens)} names but probs has V = {probs.shape[1]} columns."
                )
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "tokens", tokens)

    # Pytree: unflattening skips validation so targets pass through jit and vmap.
    def tree_flatten(self):
        return (self.t, self.probs), self.tokens

    @classmethod
    def tree_unflatten(cls, tokens, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "t", children[0])
        object.__setattr__(obj, "probs", children[1])
        object.__setattr__(obj, "tokens", tokens)
        return obj

    @property
    def num_points(self) -> int:
        """T, the number of grid points."""
        return self.probs.shape[0]

    @property
    def vocab(self) -> int:
        """V, the vocabulary size."""
        return self.probs.shape[1]

    def log_probs(self, floor: float = 1e-30) -> jax.Array:
        """(T, V) log-probabilities, with zeros replaced by ``log(floor)`` so values stay finite."""
        return jnp.log(jnp.maximum(self.probs, floor))

    @classmethod
    def from_logits(
        cls, t: ArrayLike, logits: ArrayLike, tokens: Sequence[str] | None = None
    ) -> Target:
        """Target from (T, V) logits: ``p(t) = softmax(logits(t))``.

        A logit of ``-inf`` is an exact zero probability. The softmax is taken in the float type
        the target stores (float32 for half-precision logits, see :class:`Target`).

        Args:
          t: (T,) strictly increasing grid.
          logits: (T, V) logits; finite or ``-inf``, with at least one finite logit per row.
          tokens: optional V token names.

        Returns:
          The target, with rows ``softmax(logits)``.

        Raises:
          ValueError: for a logit that is NaN or ``+inf``, a row that is all ``-inf``, or the
            grid and shape errors of :class:`Target`; the message names the first bad row.

        Example:
          >>> tgt = Target.from_logits([0.0, 1.0], [[0.0, 0.0], [0.0, 1e4]])
          >>> tgt.probs
          Array([[0.5, 0.5],
                 [0. , 1. ]], dtype=float32)
          >>> tgt = Target.from_logits([0.0, 1.0], [[0.0, -np.inf], [0.0, np.log(3.0)]])
          >>> tgt.probs[0]  # -inf is an exact zero
          Array([1., 0.], dtype=float32)
          >>> tgt.probs[1].round(4)
          Array([0.25, 0.75], dtype=float32)
        """
        z = np.asarray(logits)
        if z.ndim != 2:
            raise ValueError(f"logits must be (T, V), got shape {z.shape}.")
        _validate.grid(t, "t")
        _validate.matching_grid(t, z, "logits")
        z = z.astype(_storage_dtype(z.dtype), copy=False)
        grid = np.asarray(t, dtype=np.float64)
        fix = "every logit must be finite, or -inf for a zero probability; fix or drop such rows"
        for bad, what in ((np.isnan(z), "NaN"), (z == np.inf, "+inf")):
            rows = np.flatnonzero(bad.any(axis=1))
            if rows.size:
                raise ValueError(f"logits contains {what} in {_rows(rows, grid)}; {fix}.")
        rows = np.flatnonzero(np.all(z == -np.inf, axis=1))
        if rows.size:
            raise ValueError(
                f"logits is all -inf in {_rows(rows, grid)}, which is no distribution; give at "
                "least one token a finite logit there, or drop that grid point."
            )
        return cls(t, jax.nn.softmax(jnp.asarray(z), axis=-1), tokens, normalize=True)

    @classmethod
    def from_callable(
        cls,
        fn: Callable[[jax.Array], jax.Array],
        t: ArrayLike,
        tokens: Sequence[str] | None = None,
        *,
        normalize: bool = False,
    ) -> Target:
        """Target from ``fn``, mapping a scalar t to a (V,) probability vector (vectorised by vmap).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> tgt = Target.from_callable(lambda s: jax.nn.softmax(jnp.array([0.0, s])),
          ...                            jnp.linspace(0, 1, 5))
          >>> tgt.probs.shape
          (5, 2)
        """
        _validate.grid(t, "t")
        probs = jax.vmap(fn)(jnp.asarray(t))
        return cls(t, probs, tokens, normalize=normalize)

    @classmethod
    def from_counts(
        cls,
        t: ArrayLike,
        counts: ArrayLike,
        tokens: Sequence[str] | None = None,
        *,
        smoothing: float = 0.0,
    ) -> Target:
        """Maximum-likelihood target from (T, V) next-token counts at each grid point.

        Args:
          t: (T,) grid.
          counts: (T, V) non-negative counts.
          tokens: optional names.
          smoothing: additive pseudo-count per token (Laplace smoothing when 1); 0 keeps the
            maximum-likelihood rows, whose zero counts become zero probabilities.

        Returns:
          The target with rows ``(counts + smoothing) / (row total + V smoothing)``, computed in
          float64 and stored in JAX's default float type whatever the dtype of ``counts`` or ``t``
          (integer and half-precision inputs included).

        Raises:
          ValueError: for NaN, inf or negative counts, a negative or non-finite ``smoothing``, an
            all-zero row (named by its index and t) when ``smoothing`` is 0, or the grid and shape
            errors of :class:`Target`.

        Example:
          >>> Target.from_counts([0.0, 1.0], [[3, 1], [0, 4]], smoothing=1.0).probs
          Array([[0.6666667 , 0.33333334],
                 [0.16666667, 0.8333333 ]], dtype=float32)
        """
        n = np.asarray(counts, dtype=np.float64)
        if n.ndim != 2:
            raise ValueError(f"counts must be (T, V), got shape {n.shape}.")
        if not np.all(np.isfinite(n)):
            raise ValueError("counts contains NaN or inf.")
        if np.any(n < 0):
            raise ValueError("counts has negative entries; counts must be >= 0.")
        try:
            s = float(smoothing)
        except (TypeError, ValueError):
            s = np.nan
        if not (np.isfinite(s) and s >= 0):
            raise ValueError(f"smoothing={smoothing!r} must be a finite number >= 0.")
        n = n + s
        empty = np.flatnonzero(n.sum(axis=1) == 0)
        if empty.size:
            _validate.grid(t, "t")
            _validate.matching_grid(t, n, "counts")
            where = _rows(empty, np.asarray(t, dtype=np.float64))
            raise ValueError(
                f"counts has an all-zero row, {where}: a grid point with no observations; drop "
                "that grid point or pass smoothing > 0."
            )
        dtype = jnp.result_type(float)
        return cls(t, (n / n.sum(axis=1, keepdims=True)).astype(dtype), tokens)

    def __repr__(self) -> str:
        names = f", tokens={self.tokens}" if self.tokens else ""
        return f"Target(T={self.num_points}, V={self.vocab}{names})"


def _dtype_of(x: object) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _storage_dtype(dtype: object) -> np.dtype:
    """The float type a target stores values of ``dtype`` in (see :class:`Target`)."""
    if jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)
    return np.dtype(jnp.result_type(float))


def _rows(rows: np.ndarray, grid: np.ndarray) -> str:
    """Names the first of some bad rows by index and t, e.g. ``"row 2 (t = 0.5)"``."""
    i = int(rows[0])
    more = f" and {rows.size - 1} more row(s)" if rows.size > 1 else ""
    return f"row {i} (t = {grid[i]:.6g}){more}"
