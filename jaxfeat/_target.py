"""Target curves: next-token distributions p(t) on a grid of latent values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate
from ._model import Features


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

    def restrict(self, tokens: ArrayLike) -> Target:
        r"""The curve on a subset S of tokens, each row renormalised: ``p(t)|_S``.

        By the chain rule of KL, for any model q and every t,

        .. math:: \mathrm{KL}(p \| q) \ge p_t(S)\, \mathrm{KL}(p|_S \,\|\, q|_S),

        and ``q|_S`` is the softmax of the model's own logits on S, so a k-feature model on V
        tokens restricts to a k-feature model on S. Hence a full model within mean KL ``tol``
        gives a restricted one within ``tol / min_t p_t(S)``: counts and certified bounds for
        the restricted curve at that tolerance are lower bounds for the full curve at ``tol``.

        Args:
          tokens: (S,) distinct token indices, S >= 2, each carrying mass somewhere on the grid.

        Returns:
          The (T, S) target, token names kept.

        Raises:
          ValueError: for repeated or out-of-range indices, fewer than 2 tokens, or a grid point
            where the tokens have no mass (named by row).

        Example:
          >>> tgt = Target([0.0, 1.0], [[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
          >>> tgt.restrict([0, 2]).probs.tolist()
          [[0.6666666865348816, 0.3333333432674408], [0.25, 0.75]]
        """
        idx = self._token_indices(tokens, "tokens")
        if idx.size < 2:
            raise ValueError(f"tokens has {idx.size} index; a target needs at least 2 tokens.")
        p = np.asarray(self.probs, np.float64)[:, idx]
        mass = p.sum(axis=1)
        empty = np.flatnonzero(mass == 0)
        if empty.size:
            where = _rows(empty, np.asarray(self.t, np.float64))
            raise ValueError(f"tokens carry no probability at {where}; add a token present there.")
        names = None if self.tokens is None else tuple(self.tokens[i] for i in idx)
        return Target(self.t, (p / mass[:, None]).astype(self.probs.dtype), names)

    def top_tokens(self, top: int) -> np.ndarray:
        """(top,) indices of the ``top`` tokens with the largest maximum probability over t.

        Example:
          >>> Target([0.0, 1.0], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).top_tokens(2).tolist()
          [2, 0]
        """
        top = _validate.positive_int(top, "top")
        if top > self.vocab:
            raise ValueError(f"top={top} exceeds the vocabulary V = {self.vocab}; lower it.")
        peak = np.asarray(self.probs, np.float64).max(axis=0)
        return np.argsort(-peak, kind="stable")[:top]

    def with_rest(self, top: int) -> Target:
        r"""The ``top`` most probable tokens (by :meth:`top_tokens`) plus one "rest" token.

        The rest token carries ``p_t(R) = 1 - sum_{top} p_t``. With B the merged vocabulary,
        the chain rule of KL gives, for any model q on the V tokens and every t,

        .. math:: \mathrm{KL}(p \| q) = \mathrm{KL}(p_B \| q_B)
                  + p_t(R)\, \mathrm{KL}(p(\cdot|R) \,\|\, q(\cdot|R)).

        A model fitted to the merged curve lifts to the full vocabulary (:meth:`lift_rest`): each
        rest token gets the rest logit plus the log of its share ``r(v)`` of the rest mass averaged
        over the grid, so ``q(.|R) = r`` and the lifted model's KL is the merged fit's KL plus
        the fixed term ``p_t(R) KL(p(.|R) || r)`` (returned by :meth:`rest_kl`). Fitting the
        merged curve therefore costs O(top) per token row instead of O(V), and its count is an
        upper bound for the full curve at ``tol + mean(rest_kl)``.

        Args:
          top: number of tokens kept, 1 <= top < V.

        Returns:
          The (T, top + 1) target; the last token is the rest (named ``"<rest>"`` when the
          target has names).

        Example:
          >>> tgt = Target([0.0, 1.0], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
          >>> tgt.with_rest(1).probs
          Array([[0.2, 0.8],
                 [0.8, 0.2]], dtype=float32)
        """
        idx, rest = self._rest_split(top)
        p = np.asarray(self.probs, np.float64)
        merged = np.concatenate([p[:, idx], p[:, rest].sum(axis=1, keepdims=True)], axis=1)
        names = None
        if self.tokens is not None:
            names = (*tuple(self.tokens[i] for i in idx), "<rest>")
        return Target(self.t, merged.astype(self.probs.dtype), names, normalize=True)

    def rest_kl(self, top: int) -> np.ndarray:
        """(T,) the KL that :meth:`lift_rest` adds at each grid point: ``p_t(R) KL(p(.|R) || r)``.

        Example:
          >>> tgt = Target([0.0, 1.0], [[0.4, 0.3, 0.3], [0.2, 0.4, 0.4]])
          >>> tgt.rest_kl(1).round(6).tolist()  # the rest keeps a fixed split: nothing is lost
          [0.0, 0.0]
        """
        _idx, rest = self._rest_split(top)
        mass, cond = self._rest_conditional(rest)
        r = self._rest_share(rest)
        pos = cond > 0
        terms = np.where(pos, cond * (np.log(np.where(pos, cond, 1.0)) - np.log(r)), 0.0)
        return mass[:, 0] * terms.sum(axis=1)

    def lift_rest(self, params: Features, top: int) -> Features:
        """Features fitted to ``self.with_rest(top)``, lifted to this target's V tokens.

        Args:
          params: features on top + 1 tokens, the last being the rest.
          top: as in :meth:`with_rest`.

        Returns:
          Features on V tokens whose mean KL on this target is the merged fit's mean KL plus
          ``mean(self.rest_kl(top))``.

        Example:
          >>> import jax.numpy as jnp
          >>> tgt = Target([0.0, 1.0], [[0.4, 0.3, 0.3], [0.2, 0.4, 0.4]])
          >>> p = Features.create(jnp.zeros(2), jnp.array([[0.0, 1.0]]), jnp.ones(1), jnp.zeros(1))
          >>> tgt.lift_rest(p, 1).l.shape
          (1, 3)
        """
        idx, rest = self._rest_split(top)
        if params.vocab != top + 1:
            raise ValueError(
                f"params has V = {params.vocab} tokens but with_rest({top}) has {top + 1}; fit "
                "the merged target."
            )
        V = self.vocab
        log_r = jnp.asarray(np.log(self._rest_share(rest)), params.c.dtype)
        c = jnp.zeros((*params.c.shape[:-1], V), params.c.dtype)
        c = c.at[..., idx].set(params.c[..., :top]).at[..., rest].set(params.c[..., top:] + log_r)
        l = jnp.zeros((*params.l.shape[:-1], V), params.l.dtype)
        l = l.at[..., idx].set(params.l[..., :top]).at[..., rest].set(params.l[..., top:])
        return params._replace(c=c, l=l)

    def _rest_split(self, top: int) -> tuple[np.ndarray, np.ndarray]:
        top = _validate.positive_int(top, "top")
        if top >= self.vocab:
            raise ValueError(f"top={top} leaves no rest token (V = {self.vocab}); use top < V.")
        idx = self.top_tokens(top)
        return idx, np.setdiff1d(np.arange(self.vocab), idx)

    def _rest_share(self, rest: np.ndarray) -> np.ndarray:
        """Each rest token's share of the rest mass, averaged over the grid (never 0)."""
        mass, cond = self._rest_conditional(rest)
        # a grid point without rest mass counts as an even split
        r = np.where(mass > 0, cond, 1.0 / rest.size).mean(axis=0)
        r = np.maximum(r, np.finfo(np.float64).tiny)
        return r / r.sum()

    def _rest_conditional(self, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, 1) rest mass p_t(R) and (T, |R|) p_t(.|R), zero where the rest has no mass."""
        p = np.asarray(self.probs, np.float64)[:, rest]
        mass = p.sum(axis=1, keepdims=True)
        return mass, np.divide(p, mass, out=np.zeros_like(p), where=mass > 0)

    def _token_indices(self, tokens: ArrayLike, name: str) -> np.ndarray:
        idx = np.asarray(tokens)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"{name} must be a 1-d array of integer token indices.")
        if idx.size and (idx.min() < 0 or idx.max() >= self.vocab):
            raise ValueError(f"{name} has an index outside 0..{self.vocab - 1}.")
        if np.unique(idx).size != idx.size:
            raise ValueError(f"{name} repeats a token index; give each token once.")
        return idx

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
