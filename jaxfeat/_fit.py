"""Fitting k-feature mixtures to target curves: the public entry points and their result.

:func:`fit_batch` validates its inputs once, before any tracing, and hands them to the compiled
kernel (:func:`jaxfeat._solver.fit_kernel`); :func:`fit` and :func:`fit_ks` take a validated
:class:`~jaxfeat.Target` and skip the array checks. The internal parametrisation is in
:mod:`jaxfeat._hinge`, the optimisers in :mod:`jaxfeat._solver`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from . import _validate, distributed
from ._arrays import bcast
from ._hinge import Member, SolverSettings, enc_count, to_features
from ._model import Features, kl, log_probs
from ._solver import fit_kernel, lanes_for
from ._target import Target


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "kl",
        "mean_kl",
        "max_kl",
        "converged",
        "num_steps",
        "restart_losses",
        "restart_converged",
        "k",
    ],
    meta_fields=["activation"],
)
@dataclasses.dataclass(frozen=True)
class FitResult:
    """Result of :func:`fit` (or, with a leading batch axis on every array, :func:`fit_batch`).

    Attributes:
      params: best restart's :class:`Features` (k features; in a batch, padded to ``k_max`` with
        zero logit vectors).
      kl: (T,) KL(p(t) || q(t)) of the best restart, in nats.
      mean_kl: mean of ``kl`` over the grid (the loss minimised).
      max_kl: max of ``kl`` over the grid.
      converged: whether the best restart stopped because its loss stalled (relative decrease
        below the tolerance over a window of steps) rather than by running out of steps.
      num_steps: optimiser steps the best restart took.
      restart_losses: (R,) final mean KL of every restart.
      restart_converged: (R,) convergence flag of every restart.
      k: number of features used.
      activation: encoder name.
    """

    params: Features
    kl: jax.Array
    mean_kl: jax.Array
    max_kl: jax.Array
    converged: jax.Array
    num_steps: jax.Array
    restart_losses: jax.Array
    restart_converged: jax.Array
    k: jax.Array
    activation: str = "relu"

    def take(self, i: int, k: int | None = None) -> FitResult:
        """The i-th fit of a batched result (from :func:`fit_batch`), trimmed to its k features.

        Args:
          i: index into the batch.
          k: its number of features; default ``self.k[i]`` (pass it where that is traced).

        Returns:
          :class:`FitResult` without the batch axis, ``params`` holding exactly k features.

        Example:
          >>> import jaxfeat
          >>> tgt = jaxfeat.targets.temperature(nonmonotone=True)
          >>> res = jaxfeat.fit_batch(tgt.t, tgt.probs[None].repeat(2, 0), [1, 2], restarts=4)
          >>> res.take(0).params.l.shape, res.take(1).params.l.shape
          ((1, 3), (2, 3))
        """
        one = _index(self, i)
        k = int(one.k) if k is None else k
        return dataclasses.replace(one, params=_trim(one.params, k))


@jax.jit
def _index(res: FitResult, i) -> FitResult:
    # One compiled program, not one small program per leaf, for the first call at a shape.
    return jax.tree.map(lambda x: x[i], res)


@functools.partial(jax.jit, static_argnames="activation")
def _select(members: Member, t, p, activation) -> FitResult:
    """Picks each target's best restart and evaluates it with the public model."""
    losses = jnp.where(jnp.isfinite(members.loss), members.loss, jnp.inf)
    best = jnp.argmin(losses, axis=1)
    pick = jax.tree.map(
        lambda x: jnp.take_along_axis(
            x, bcast(best, x[:, :1]) if x.ndim > 1 else best[:, None], axis=1
        )[:, 0],
        members,
    )
    params = to_features(pick, t[0], t[-1] - t[0], activation)
    params = params._replace(l=params.l * pick.mask[..., None])
    lq = jax.vmap(lambda prm: log_probs(prm, t, activation))(params)
    # KL >= 0; rounding can leave an exact fit's value a few ulps below zero.
    kls = jnp.maximum(kl(p, lq), 0.0)
    return FitResult(
        params=params,
        kl=kls,
        mean_kl=kls.mean(axis=1),
        max_kl=kls.max(axis=1),
        converged=pick.converged,
        num_steps=pick.steps,
        restart_losses=members.loss,
        restart_converged=members.converged,
        k=pick.mask.sum(axis=1).astype(jnp.int32),
        activation=activation,
    )


def fit_batch(
    t: ArrayLike,
    probs: ArrayLike,
    k: int | ArrayLike,
    *,
    activation: str = "relu",
    restarts: int = 16,
    max_steps: int = 200,
    key: int | jax.Array = 0,
    optimizer: optax.GradientTransformation | None = None,
    k_max: int | None = None,
    init_knots: ArrayLike | None = None,
    init_directions: ArrayLike | None = None,
    solver: SolverSettings | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Fits k-feature models to B targets on one grid in one compiled call.

    Targets, restarts and feature counts are vmapped together; a batch may mix feature counts
    (``k`` of shape (B,)): every member uses ``k_max`` feature slots and masks the unused ones, so
    a sweep over k compiles once.

    A batch too large for device memory streams through in equal chunks of targets (sized by
    ``solver.chunk_bytes``, or a quarter of an accelerator's memory), one compilation for all of
    them, so working memory stays flat in B. In a multi-process job
    (:func:`jaxfeat.distributed.initialize`), every process calls this with the same inputs; each
    fits its share of the targets on its own devices and every process returns the whole result,
    identical to a one-process run with the same key.

    Args:
      t: (T,) strictly increasing grid.
      probs: (B, T, V) target distributions (half-precision inputs are fitted in float32).
      k: number of features, an int or (B,) ints.
      activation: ``"relu"``, ``"jumprelu"`` or ``"softplus"``.
      restarts: restarts per target (the best is kept).
      max_steps: optimiser steps per restart.
      key: integer seed or PRNG key (split into one key per target), or (B,) PRNG keys, one per
        target; the same key gives the same result.
      optimizer: any ``optax.GradientTransformation``; ``None`` uses damped Gauss-Newton, with
        the assembled matrix when the model has at most ``solver.lm_max_params`` parameters and
        matrix-free conjugate gradients otherwise (each step O(T (k + 1) V), memory O(T V +
        k^2 V) per member, for vocabularies in the thousands).
      k_max: feature slots (default ``max(k)``); fix it to reuse one compilation across calls.
      init_knots: optional (B, k_max) knot positions in units of t for the first restart
        (NaN where free), e.g. the breakpoints of an optimal segmentation.
      init_directions: optional (B, k_max) directions of those features, +1 for one that is off
        left of its knot (``w > 0``) and -1 for one that is off right of it; default +1. With
        ``init_knots`` from a fit (``-b / w`` and ``sign(w)`` for ReLU) the first restart starts
        from that fit's knots.
      solver: the engine's constants (:class:`jaxfeat.SolverSettings`; default settings if
        ``None``).
      devices: devices of this process to split the targets over (default: every local device,
        and in a multi-process job every process's, except inside
        :func:`jaxfeat.distributed.local`); inside ``jit`` or ``vmap`` the fit runs where it is
        traced. Given, the fit runs on them alone, without the other processes.
      progress: a progress bar over the chunks on stderr; ``None`` shows one only on a terminal
        and only when there are several chunks.

    Returns:
      :class:`FitResult` with a leading axis B on every array; ``params`` padded to ``k_max``.

    Raises:
      ValueError: for bad shapes or values, an unknown activation, a ``k`` list whose length is
        not B, or an ``optimizer`` that is not an ``optax.GradientTransformation``.

    Example:
      >>> import jaxfeat
      >>> tgt = jaxfeat.targets.oscillating(1, n=64)
      >>> res = fit_batch(tgt.t, tgt.probs[None], k=[4], restarts=4)
      >>> res.mean_kl.shape, bool(res.mean_kl[0] < 1e-2)
      ((1,), True)
    """
    _validate.grid(t, "t")
    if np.ndim(probs) != 3:
        raise ValueError(f"probs must be (B, T, V), got shape {np.shape(probs)}; add a batch axis.")
    _validate.matching_grid(t, probs)
    _validate.simplex_rows(probs, "probs")
    p = _validate.float_array(probs, "probs")
    return _fit_checked(
        jnp.asarray(t, p.dtype),
        p,
        k,
        activation=activation,
        restarts=restarts,
        max_steps=max_steps,
        key=key,
        optimizer=optimizer,
        k_max=k_max,
        init_knots=init_knots,
        init_directions=init_directions,
        solver=solver,
        devices=devices,
        progress=progress,
    )


def _fit_checked(
    t: jax.Array,
    p: jax.Array,
    k: int | ArrayLike,
    *,
    activation: str,
    restarts: int,
    max_steps: int,
    key: int | jax.Array,
    optimizer: optax.GradientTransformation | None,
    k_max: int | None,
    init_knots: ArrayLike | None,
    solver: SolverSettings | None,
    init_directions: ArrayLike | None = None,
    devices: Sequence[jax.Device] | None,
    progress: bool | None = None,
) -> FitResult:
    """:func:`fit_batch` on a grid and targets that are already validated."""
    _validate.activation(activation)
    restarts = _validate.positive_int(restarts, "restarts")
    max_steps = _validate.positive_int(max_steps, "max_steps")
    solver = SolverSettings() if solver is None else solver
    if not isinstance(solver, SolverSettings):
        raise ValueError(f"solver must be a jaxfeat.SolverSettings, got {type(solver).__name__}.")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-2)), got "
            f"{type(optimizer).__name__}; pass None for the default damped Gauss-Newton."
        )
    B = p.shape[0]
    ks, k_max = _feature_counts(k, k_max, B)
    keys = _keys(key, B)
    knots = np.full((B, k_max), np.nan, p.dtype)
    if init_knots is not None:
        if np.shape(init_knots) != (B, k_max):
            raise ValueError(
                f"init_knots must be (B, k_max) = {(B, k_max)}, got {np.shape(init_knots)}."
            )
        knots = jnp.asarray(init_knots, p.dtype)
    dirs = np.ones((B, k_max))
    if init_directions is not None:
        if init_knots is None:
            raise ValueError("init_directions needs init_knots: they are the knots' directions.")
        if np.shape(init_directions) != (B, k_max):
            raise ValueError(
                f"init_directions must be (B, k_max) = {(B, k_max)}, got "
                f"{np.shape(init_directions)}."
            )
        if _validate.is_traced(init_directions):
            dirs = jnp.where(jnp.asarray(init_directions) < 0, -1.0, 1.0)
        else:
            d = np.asarray(init_directions, np.float64)
            if not np.all(np.isin(d, (-1.0, 1.0)) | np.isnan(d)):
                raise ValueError(
                    "init_directions must hold +1 (off left of the knot) or -1 (off right), "
                    "or NaN where free."
                )
            dirs = np.where(d < 0, -1.0, 1.0)
    dirs = jnp.asarray(dirs, p.dtype)
    n_params = (k_max + 1) * p.shape[-1] + enc_count(activation) * k_max
    if optimizer is not None:
        method = "optax"
    else:
        method = "dense" if n_params <= solver.lm_max_params else "cg"
    kernel = functools.partial(
        _fit_members,
        t,
        k_max=k_max,
        restarts=restarts,
        activation=activation,
        max_steps=max_steps,
        optimizer=optimizer,
        method=method,
        solver=solver,
    )
    args = (p, ks, keys, knots, dirs)
    if _validate.is_traced(p, ks, keys, knots, dirs):
        return kernel(args, ())
    spread = devices is None and distributed.spreading()
    devices = tuple(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; pass None for every device, or a list of them.")
    if any(d.process_index != jax.process_index() for d in devices):
        raise ValueError(
            "devices must belong to this process (jax.local_devices()); pass None to split the "
            "targets over every process of the job."
        )
    if spread:
        start, stop, size = distributed.share(B)
        args = tuple(_rows(a, start, stop, size) for a in args)
    n = args[0].shape[0]
    T, V = p.shape[1:]
    chunk = chunk_targets(restarts, T, V, k_max, p.dtype.itemsize, devices, solver)
    if n <= chunk and not spread:
        return kernel(args, devices)
    # The lane width is the one a single process fitting the whole batch would use: results are
    # then bit for bit the same (members in lanes of one width do not depend on each other).
    kernel = functools.partial(kernel, width=min(B, chunk))
    chunk = min(chunk, n)
    parts = []
    with tqdm(
        total=n,
        desc="fit_batch",
        unit="target",
        leave=False,
        disable=(n <= chunk or None) if progress is None else not progress,
    ) as bar:
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            res = kernel(tuple(_rows(a, lo, lo + m, chunk) for a in args), devices)
            parts.append(jax.tree.map(lambda x, m=m: np.asarray(x)[:m], res))
            bar.update(m)
    out = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    if spread:
        out = distributed.gather(out, B)
    return jax.tree.map(jnp.asarray, out)


def _fit_members(
    t: jax.Array,
    args: tuple,
    devices: tuple,
    *,
    k_max: int,
    restarts: int,
    activation: str,
    max_steps: int,
    optimizer: optax.GradientTransformation | None,
    method: str,
    solver: SolverSettings,
    width: int | None = None,
) -> FitResult:
    """One compiled fit of (targets, counts, keys, knots, directions) on ``devices``; the lanes
    are sized for ``width`` targets (default: these)."""
    p = args[0]
    B = p.shape[0]
    n_dev = max(len(devices), 1)
    platform = devices[0].platform if devices else jax.default_backend()
    lanes = lanes_for(
        -(-(width or B) // n_dev) * restarts,
        p.shape[1],
        p.shape[2],
        k_max,
        p.dtype.itemsize,
        platform,
        solver,
    )
    # Every device fills its lanes: a share smaller than them is padded (by repeats) to them.
    args = _pad_batch(args, n_dev, minimum=n_dev * -(-lanes // restarts))
    members = fit_kernel(
        t,
        *args,
        k_max=k_max,
        restarts=restarts,
        activation=activation,
        max_steps=max_steps,
        optimizer=optimizer,
        method=method,
        lanes=lanes,
        solver=solver,
        devices=devices,
    )
    if args[0].shape[0] != B:
        members = jax.tree.map(lambda x: x[:B], members)
    return _select(members, t, p, activation)


def chunk_targets(
    restarts: int,
    T: int,
    V: int,
    k_max: int,
    itemsize: int,
    devices: Sequence[jax.Device],
    solver: SolverSettings | None = None,
) -> int:
    """Targets per chunk of a large :func:`fit_batch`: what fits the memory budget of each device.

    Args:
      restarts, T, V, k_max: the fit's restarts, grid points, vocabulary and feature slots.
      itemsize: bytes per number (4 for float32).
      devices: the devices the targets are split over.
      solver: the engine's constants (default settings if ``None``).

    Returns:
      Targets per chunk, a multiple of the device count.

    A member's largest live arrays are a few (T, (k + 1) V) intermediates; four of them per
    restart is a safe ceiling for every method (the optax path holds them for every member at
    once). The budget is ``solver.chunk_bytes`` per device, or a quarter of an accelerator's
    memory where JAX reports it. The result depends on the shapes only, not on B, so every chunk
    of every batch of that shape shares one compilation.

    Example:
      >>> import jax, jaxfeat
      >>> chunk_targets(16, 256, 3, 8, 4, jax.devices("cpu")[:1])  # 1 GiB / 1.7 MB
      606
    """
    solver = SolverSettings() if solver is None else solver
    per_target = 4 * restarts * T * (k_max + 1) * V * itemsize
    budget = solver.chunk_bytes
    if devices and devices[0].platform != "cpu":
        stats = devices[0].memory_stats() or {}
        budget = stats.get("bytes_limit", 4 * budget) // 4
    return len(devices) * max(1, budget // per_target)


def _rows(a, start: int, stop: int, size: int):
    """Rows ``start:stop`` of ``a``, padded to ``size`` by repeating the last (or ``a``'s last)."""
    part = a[start:stop] if stop > start else a[-1:]
    pad = size - part.shape[0]
    if not pad:
        return part
    return jnp.concatenate([jnp.asarray(part), jnp.repeat(jnp.asarray(part[-1:]), pad, axis=0)])


def _feature_counts(k: int | ArrayLike, k_max: int | None, B: int) -> tuple[jax.Array, int]:
    """(B,) feature counts and the number of feature slots, checked."""
    if _validate.is_traced(k):
        if k_max is None:
            raise ValueError("k is traced; pass k_max (the number of feature slots) explicitly.")
        return jnp.broadcast_to(jnp.asarray(k, jnp.int32), (B,)), _validate.positive_int(
            k_max, "k_max"
        )
    k_arr = np.asarray(k)
    if k_arr.ndim > 1 or (k_arr.ndim == 1 and k_arr.shape[0] != B):
        raise ValueError(
            f"k has shape {k_arr.shape} but there are B = {B} targets; give one int for all of "
            f"them or one per target (shape ({B},))."
        )
    k_arr = np.broadcast_to(k_arr, (B,))
    for kv in np.unique(k_arr):
        _validate.positive_int(kv.item(), "k")
    k_top = int(k_arr.max())
    if k_max is None:
        k_max = k_top
    elif k_max < k_top:
        raise ValueError(f"k_max={k_max} is smaller than the largest k={k_top}; raise k_max.")
    return jnp.asarray(k_arr, jnp.int32), _validate.positive_int(k_max, "k_max")


def _keys(key: int | jax.Array, B: int) -> jax.Array:
    """(B,) PRNG keys from a seed, a key, or B keys."""
    if (
        isinstance(key, jax.Array)
        and key.ndim == 1
        and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        if key.shape[0] != B:
            raise ValueError(f"key holds {key.shape[0]} keys but probs has B = {B} targets.")
        return key
    if isinstance(key, bool) or not isinstance(key, int | np.integer | jax.Array):
        raise ValueError(f"key={key!r} must be an integer seed or a jax.random key.")
    if isinstance(key, int | np.integer):
        key = jax.random.key(int(key))
    elif not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key) if key.shape == (2,) else jax.random.key(key)
    return jax.random.split(key, B)


def _pad_batch(arrays, devices: int, minimum: int = 0):
    """Pads the target axis to a multiple of the device count, and to at least ``minimum``
    targets, by repeating the last target."""
    B = arrays[0].shape[0]
    pad = max(minimum - B, 0)
    pad += -(B + pad) % devices
    if not pad:
        return arrays
    return tuple(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in arrays)


def fit(
    target: Target, k: int, *, init_knots: ArrayLike | None = None, **options: Any
) -> FitResult:
    """Fits a mixture of k linear logit features to one target curve.

    Minimises the mean over the grid of ``KL(p(t) || softmax(c + sum_i a_i(t) l_i))`` over
    ``(c, l, w, b)`` (and JumpReLU thresholds), keeping the best of ``restarts`` restarts.

    Args:
      target: the curve to fit.
      k: number of features (>= 1).
      init_knots: optional (k,) knot positions in units of t for the first restart.
      **options: the keywords of :func:`fit_batch` (``activation``, ``restarts``, ``max_steps``,
        ``key``, ``optimizer``, ``k_max`` to share one compilation across k, ``solver``,
        ``devices``).

    Returns:
      :class:`FitResult` with ``params`` holding exactly k features.

    Example:
      >>> import jaxfeat
      >>> res = fit(jaxfeat.targets.html_closing_tag(), k=1)
      >>> bool(res.mean_kl < 1e-6), bool(res.converged)
      (True, True)
    """
    target = _validate.target(target)
    k = _validate.positive_int(k, "k")
    knots = None
    if init_knots is not None:
        if np.shape(init_knots) != (k,):
            raise ValueError(
                f"init_knots must have shape (k,) = ({k},), got {np.shape(init_knots)}."
            )
        slots = options.get("k_max") or k
        knots = (
            jnp.full((1, slots), jnp.nan, target.probs.dtype)
            .at[0, :k]
            .set(jnp.asarray(init_knots, target.probs.dtype))
        )
    res = _fit_checked(target.t, target.probs[None], k, **_options(options), init_knots=knots)
    return res.take(0, k)


def fit_ks(target: Target, ks: Sequence[int], **options: Any) -> list[FitResult]:
    """Fits every k in ``ks`` to one target in a single compiled call (one kernel, masked slots).

    Args:
      target: the curve to fit.
      ks: feature counts.
      **options: the keywords of :func:`fit_batch`.

    Returns:
      One :class:`FitResult` per k, each trimmed to its k features.

    Example:
      >>> import jaxfeat
      >>> out = fit_ks(jaxfeat.targets.temperature(nonmonotone=True), [1, 2], restarts=4)
      >>> out[1].mean_kl < out[0].mean_kl
      Array(True, dtype=bool)
    """
    target = _validate.target(target)
    ks = [_validate.positive_int(k, "k") for k in ks]
    if not ks:
        raise ValueError("ks is empty; give at least one feature count.")
    probs = jnp.broadcast_to(target.probs, (len(ks), *target.probs.shape))
    res = _fit_checked(target.t, probs, np.asarray(ks), init_knots=None, **_options(options))
    return [res.take(i, k) for i, k in enumerate(ks)]


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """Every keyword option of :func:`fit_batch` but the initial knots, defaults from its signature.

    Its signature is the one home of the defaults: :func:`fit` and :func:`fit_ks` forward to the
    same validated path without checking the target's arrays again.
    """
    params = {
        name: prm
        for name, prm in inspect.signature(fit_batch).parameters.items()
        if prm.kind is inspect.Parameter.KEYWORD_ONLY
        and name not in ("init_knots", "init_directions")
    }
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TypeError(f"unknown keyword(s) {unknown}; the options are {', '.join(params)}.")
    return {name: options.get(name, prm.default) for name, prm in params.items()}


def _trim(params: Features, k: int) -> Features:
    return Features(params.c, params.l[:k], params.w[:k], params.b[:k], params.theta[:k])
