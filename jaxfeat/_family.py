"""The feature family of a latent: the SAE features whose activations move with t, the curve they
make together, and the smallest part of it that reproduces a reference curve.

Given activations x_n at the SAE's site labelled with latent values t_n, each feature's activation
profile is its mean in each bin of t. A feature whose profile is flat in t only adds to the other
logits c, so the family is the features that (a) vary with t beyond the noise within bins and (b)
carry a visible part of the variation of the tokens' logits. The family's curve is
``q(t) = softmax(c + Σ_i a_i(t) l_i)`` over the chosen tokens, with the offset c fitted: for fixed
profiles and effects the mean KL to the reference is convex in c.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate
from ._arrays import pow2
from ._count import RequiredFeatures, required_features
from ._model import clipped_log_probs, kl
from ._sae import SAE, check_unembedding, encode, logit_effects, token_ids
from ._target import Target

# With at most this many distinct latent values, each value is its own bin; otherwise t is cut
# into DEFAULT_BINS bins of equal counts (quantiles: an outlier in t does not empty the rest).
MAX_LEVELS = 64
DEFAULT_BINS = 32
# Largest family searched exhaustively (2^m subsets, one vmapped convex fit each), and the most
# work allowed for it: 2^m dense (n, n) Newton solves per step cost about 2^m n^3.
EXHAUSTIVE_MAX = 10
EXHAUSTIVE_WORK = 2**31
# Newton steps for the offset c, the step lengths tried per step, and the gradient size (nats per
# logit) below which the fit counts as converged.
NEWTON_STEPS = 40
STEP_LENGTHS = 2.0 ** -np.arange(10)
GRAD_TOL = 1e-5
# Encoder rows per compiled chunk: about 2^24 feature activations in memory at once, and at most
# 4096 rows, so that float32 sums within a chunk stay accurate (chunks merge in float64).
CHUNK_ELEMENTS = 2**24
CHUNK_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class FeatureFamily:
    """Result of :func:`feature_family`. Arrays are NumPy; members are ordered by ``shares``.

    Attributes:
      members: (m,) indices of the member features in the SAE's dictionary.
      tokens: (n,) the token ids the curves are over.
      grid: (T,) bin centres: the mean latent value of each bin's samples.
      counts: (T,) samples per bin.
      profiles: (T, m) each member's mean activation per bin, a_i(t).
      active: (T, m) samples per bin on which each member is nonzero.
      effects: (m, n) each member's logit effect on ``tokens`` per unit activation.
      shares: (m,) each member's share of the latent's logit variation: its energy
        ``Σ_t |(a_i(t) - ā_i) l̃_i|²`` (``l̃_i`` centred over tokens) over the sum of all d_sae
        features' energies. The whole dictionary's shares sum to 1.
      variation: (m,) each member's bias-corrected correlation ratio ε² = (SS_between -
        (T - 1) MS_within) / SS_total of its activation (clipped at 0): 1 for an activation that
        is a function of t, about 0 for one flat in t however many bins there are (plain η² would
        be (T - 1) / (N - 1) for pure noise).
      offset: (n,) the fitted c.
      curve: (T, n) the family's next-token curve ``softmax(c + Σ_i a_i(t) l_i)``.
      reference: (T, n) the reference curve (bin means of the per-sample distributions).
      reference_source: ``"given"`` (the ``reference`` argument) or ``"activations"``
        (``softmax(x W_U)`` over ``tokens``).
      kl: mean over the grid of ``KL(reference(t) || curve(t))``, in nats.
      converged: whether the fit of c reached the gradient tolerance.
      tol: the tolerance of the sub-family search, mean KL in nats.
      subfamily: indices (into the dictionary) of the smallest sub-family whose curve is within
        ``tol`` of the reference, or ``None`` if no subset found is. Adding a member can make
        the fit worse (its profile is fixed), so a sub-family may reach ``tol`` when the whole
        family (``kl``) does not.
      subfamily_kl: that sub-family's mean KL (the whole family's if ``subfamily`` is ``None``).
      size_kl: (m + 1,) the best mean KL found with s members, s = 0..m (s = 0: c alone); not
        monotone in s, for the same reason.
      search: ``"exhaustive"`` (every subset: ``size_kl`` is the exact minimum per size) or
        ``"greedy"`` (forward selection: ``size_kl`` is an upper bound per size).
      required: :func:`jaxfeat.required_features` on the reference curve (the certified bracket
        for an affine latent), or ``None`` when not asked for. It is computed on the grid mapped
        affinely onto [0, 1] (which changes no feature count), so its fit's ``w, b`` are in those
        units.
    """

    members: np.ndarray
    tokens: np.ndarray
    grid: np.ndarray
    counts: np.ndarray
    profiles: np.ndarray
    active: np.ndarray
    effects: np.ndarray
    shares: np.ndarray
    variation: np.ndarray
    offset: np.ndarray
    curve: np.ndarray
    reference: np.ndarray
    reference_source: str
    kl: float
    converged: bool
    tol: float
    subfamily: np.ndarray | None
    subfamily_kl: float
    size_kl: np.ndarray
    search: str
    required: RequiredFeatures | None

    @property
    def target(self) -> Target:
        """The reference curve as a :class:`jaxfeat.Target` on the bin grid."""
        return Target(
            self.grid, self.reference, tokens=[str(i) for i in self.tokens], normalize=True
        )


def feature_family(
    sae: SAE,
    x: ArrayLike,
    t: ArrayLike,
    W_U: ArrayLike,
    *,
    tokens: ArrayLike,
    tol: float,
    reference: ArrayLike | None = None,
    ln_scale: float | None = None,
    bins: int | None = None,
    min_variation: float = 0.2,
    min_share: float = 0.01,
    count: bool = True,
    count_options: Mapping[str, Any] | None = None,
) -> FeatureFamily:
    """Find the SAE features that carry a latent, the curve they make, and how many are needed.

    1. Bin the samples by t (each distinct value its own bin when there are at most 64, else
       ``bins`` bins of equal counts) and take each feature's mean activation per bin.
    2. Members: features with bias-corrected correlation ratio ``ε² >= min_variation`` (the
       activation depends on t) and share of the logit variation ``>= min_share`` (it moves
       these tokens).
    3. Fit c of ``q(t) = softmax(c + Σ a_i(t) l_i)`` to the reference (convex; Newton).
    4. Smallest sub-family within ``tol``: every subset when the family has at most 10 members
       (and 2^m n^3 is at most 2^31, n the number of tokens), else the better, size by size,
       of greedy forward selection and the prefixes in share order (which keep pairs whose
       large parts cancel together); ``search`` says which. Each fit of c costs
       O(T n^2 + n^3) per Newton step: ``tokens`` is meant to be the handful of tokens the
       latent moves.
    5. ``required``: :func:`jaxfeat.required_features` on the reference curve, so the SAE's
       family size sits beside the certified bracket. The bracket is for ReLU features of an
       affine latent (``"jumprelu"`` for a JumpReLU SAE): it applies to the SAE when x is
       affine in t.

    Args:
      sae: the SAE.
      x: (N, d_in) activations at the SAE's site.
      t: (N,) the latent's value for each sample.
      W_U: (d_in, V) unembedding (see :func:`jaxfeat.sae.logit_effects` for LayerNorm).
      tokens: (n,) token ids the curves are over (n >= 2).
      tol: mean-KL tolerance in nats for the sub-family search and the count (> 0).
      reference: optional (N, V) or (N, n) next-token probabilities per sample (the model's
        own output, or the true p(t)): (N, V) columns by token id, (N, n) in the order of
        ``tokens`` (when n == V, columns are read as token ids); restricted to ``tokens`` and
        renormalised. ``None``:
        ``softmax(x W_U)`` over ``tokens``, which is the model's output only when x is the whole
        residual stream at the unembedding; for an MLP-output site pass the model's output.
      ln_scale: frozen final-LayerNorm scale for the logit effects and the default reference.
      bins: number of equal-count bins of t (default: distinct values, or 32).
      min_variation: smallest corrected correlation ratio ε² of a member, in [0, 1].
      min_share: smallest share of the logit variation of a member, in [0, 1].
      count: compute ``required`` (several compiled fits: seconds to minutes).
      count_options: keywords for :func:`jaxfeat.required_features` (``k_max``, ``restarts``,
        ``activation``, ...).

    Returns:
      :class:`FeatureFamily`.

    Raises:
      ValueError: for x not (N, sae.d_in), NaN or inf in x, t or the reference, t not (N,),
        fewer than 2 distinct latent values, W_U not (d_in, V), or tokens out of range.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> t = np.linspace(0, 1, 200)
      >>> x = np.stack([np.maximum(t - 0.5, 0), np.ones_like(t)], 1)  # one ramp, one constant
      >>> sae = SAE(jnp.eye(2), jnp.zeros(2), jnp.eye(2), jnp.zeros(2))
      >>> fam = feature_family(sae, x, t, jnp.array([[2.0, 0.0], [1.0, 1.0]]), tokens=[0, 1],
      ...                      tol=1e-3, count=False)
      >>> fam.members.tolist(), fam.kl < 1e-6
      ([0], True)
    """
    tol = _validate.positive_float(tol, "tol")
    x = _activations(x, sae)
    t = _latent(t, x.shape[0])
    W_U = check_unembedding(W_U, sae)
    ids = token_ids(tokens, W_U.shape[1])
    for value, name in ((min_variation, "min_variation"), (min_share, "min_share")):
        if not 0.0 <= _validate.nonnegative_float(value, name) <= 1.0:
            raise ValueError(f"{name}={value!r} must lie in [0, 1].")
    ref = None if reference is None else _reference(reference, x.shape[0], W_U.shape[1], ids)
    index, grid, counts = _bins(t, bins)
    stats = _binned_stats(sae, x, index, grid.size, W_U[:, ids], ln_scale, ref)
    means, m2, active, ref_curve = stats
    effects = np.asarray(logit_effects(sae, W_U, tokens=ids, ln_scale=ln_scale), np.float64)

    variation = _epsilon_squared(means, m2, counts)
    centred = means - means.mean(axis=0)
    energy = (centred**2).sum(axis=0) * ((effects - effects.mean(axis=1, keepdims=True)) ** 2).sum(
        1
    )
    shares = energy / energy.sum() if energy.sum() > 0 else np.zeros_like(energy)
    chosen = np.flatnonzero((variation >= min_variation) & (shares >= min_share) & (energy > 0))
    members = chosen[np.argsort(-shares[chosen], kind="stable")]

    profiles, member_effects = means[:, members], effects[members]
    fit = functools.partial(_fit_masks, jnp.asarray(profiles), jnp.asarray(member_effects))
    reference_curve = jnp.asarray(ref_curve)
    full = np.ones((1, members.size), bool)
    offset, losses, grads = (np.asarray(v) for v in fit(jnp.asarray(full), reference_curve))
    size_kl, best, search = _search(fit, reference_curve, members.size)
    size_kl = np.maximum(size_kl, 0.0)  # float32 rounding can leave a KL of -1e-7
    reached = np.flatnonzero(size_kl <= tol)
    subfamily = None if reached.size == 0 else members[best[reached[0]]]
    required = None
    if count:
        options = {"activation": "jumprelu" if sae.architecture == "jumprelu" else "relu"}
        options.update(count_options or {})
        unit = (grid - grid[0]) / (grid[-1] - grid[0])
        required = required_features(Target(unit, ref_curve, normalize=True), tol, **options)
    curve = np.asarray(jax.nn.softmax(offset[0] + profiles @ member_effects, axis=-1))
    return FeatureFamily(
        members=members,
        tokens=ids,
        grid=grid,
        counts=counts,
        profiles=profiles,
        active=active[:, members],
        effects=member_effects,
        shares=shares[members],
        variation=variation[members],
        offset=offset[0],
        curve=curve,
        reference=ref_curve,
        reference_source="activations" if reference is None else "given",
        kl=max(float(losses[0]), 0.0),
        converged=bool(grads[0] <= GRAD_TOL),
        tol=tol,
        subfamily=subfamily,
        subfamily_kl=max(float(size_kl[reached[0]] if reached.size else losses[0]), 0.0),
        size_kl=size_kl,
        search=search,
        required=required,
    )


def _epsilon_squared(means: np.ndarray, m2: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Bias-corrected correlation ratio per feature: unbiased for pure noise, unlike η²."""
    n, bins = counts.sum(), counts.size
    overall = (counts @ means) / n
    between = counts @ (means - overall) ** 2
    within = m2.sum(axis=0)
    total = between + within
    noise = (bins - 1) * within / max(n - bins, 1)
    eps = np.divide(between - noise, total, out=np.zeros_like(total), where=total > 0)
    return np.clip(eps, 0.0, 1.0)


def _activations(x: ArrayLike, sae: SAE) -> np.ndarray:
    shape = np.shape(x)
    if len(shape) != 2 or shape[1] != sae.d_in:
        raise ValueError(
            f"x has shape {shape}; it must be (N, d_in) = (N, {sae.d_in}), one row of the SAE's "
            "input activations per sample."
        )
    a = np.asarray(x)
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise ValueError(f"x has dtype {a.dtype}; activations must be numbers.")
    finite = np.isfinite(a if a.dtype.kind == "f" else a.astype(np.float32))
    bad = ~finite.all(axis=1)
    if bad.any():
        raise ValueError(
            f"x has NaN or inf in {int(bad.sum())} row(s), the first at row {int(np.argmax(bad))}; "
            "drop those samples."
        )
    return a


def _latent(t: ArrayLike, n: int) -> np.ndarray:
    a = np.asarray(t, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(
            f"t has shape {a.shape}; it must be (N,) = ({n},), one value per row of x."
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"t has NaN or inf at row {int(np.argmax(~np.isfinite(a)))}.")
    if np.unique(a).size < 2:
        raise ValueError("t has fewer than 2 distinct values; a family needs the latent to vary.")
    return a


def _reference(reference: ArrayLike, n: int, vocab: int, ids: np.ndarray) -> np.ndarray:
    shape = np.shape(reference)
    if len(shape) != 2 or shape[0] != n or shape[1] not in (vocab, ids.size):
        raise ValueError(
            f"reference has shape {shape}; it must be (N, V) = ({n}, {vocab}) or (N, n) = "
            f"({n}, {ids.size}): the next-token probabilities of each sample."
        )
    p = np.asarray(reference)
    if shape[1] == vocab:  # columns are token ids (also when n == V)
        p = p[:, ids]
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("reference has NaN, inf or negative entries; it must be probabilities.")
    empty = p.sum(axis=1) <= 0
    if empty.any():
        raise ValueError(
            f"reference row {int(np.argmax(empty))} has no probability on tokens "
            f"({int(empty.sum())} such rows); drop those samples or choose tokens they predict."
        )
    return p / p.sum(axis=1, keepdims=True)


def _bins(t: np.ndarray, bins: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    levels = np.unique(t)
    if bins is None and levels.size <= MAX_LEVELS:
        index = np.searchsorted(levels, t)
    else:
        n = DEFAULT_BINS if bins is None else _validate.positive_int(bins, "bins")
        if n < 2:
            raise ValueError(f"bins={bins!r} must be at least 2.")
        edges = np.quantile(t, np.linspace(0, 1, n + 1))
        raw = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n - 1)
        _, index = np.unique(raw, return_inverse=True)  # drop empty bins (ties in t)
    counts = np.bincount(index)
    grid = np.bincount(index, weights=t) / counts
    unit = ((grid - grid[0]) / (grid[-1] - grid[0])).astype(np.float32)
    if np.any(np.diff(unit) <= 0):
        raise ValueError(
            "t has bins closer than float32 can tell apart relative to its range; pass fewer "
            "bins= or merge nearby latent values."
        )
    return index, grid, counts.astype(np.float64)


@functools.partial(jax.jit, static_argnames=("n_bins", "centre"))
def _chunk(sae, x, index, W, scale, ref, *, n_bins, centre):
    f = encode(sae, x).astype(jnp.float32)
    seg = functools.partial(jax.ops.segment_sum, segment_ids=index, num_segments=n_bins + 1)
    n = seg(jnp.ones(x.shape[0], jnp.float32))
    mean = seg(f) / jnp.maximum(n, 1.0)[:, None]
    # Two-pass corrected sums: the rounding in the first pass's mean cancels out of both.
    dev = f - mean[index]
    dev_sum = seg(dev)
    mean = mean + dev_sum / jnp.maximum(n, 1.0)[:, None]
    m2 = seg(dev**2) - dev_sum**2 / jnp.maximum(n, 1.0)[:, None]
    active = seg((f > 0).astype(jnp.float32))
    if ref is None:
        z = x.astype(jnp.float32)
        if centre:
            z = (z - z.mean(axis=-1, keepdims=True)) / scale
        ref = jax.nn.softmax(z @ W, axis=-1)
    return n[:n_bins], mean[:n_bins], m2[:n_bins], active[:n_bins], seg(ref)[:n_bins]


def _binned_stats(sae, x, index, n_bins, W, ln_scale, ref):
    """Per-bin means, within-bin sums of squares (Chan's pairwise merge, float64 on the host),
    active counts and reference sums, one compiled chunk of rows at a time."""
    rows = max(1, min(x.shape[0], CHUNK_ROWS, CHUNK_ELEMENTS // max(sae.d_sae, 1)))
    rows = 1 << (rows.bit_length() - 1)  # a power of two: one compiled shape for all chunks
    centre = ln_scale is not None
    scale = 1.0 if ln_scale is None else _validate.positive_float(ln_scale, "ln_scale")
    count = np.zeros(n_bins)
    mean = np.zeros((n_bins, sae.d_sae))
    m2 = np.zeros((n_bins, sae.d_sae))
    active = np.zeros((n_bins, sae.d_sae))
    ref_sum = np.zeros((n_bins, W.shape[1]))
    for start in range(0, x.shape[0], rows):
        stop = min(start + rows, x.shape[0])
        pad = rows - (stop - start)
        xs = np.pad(x[start:stop], ((0, pad), (0, 0)))
        ids = np.pad(index[start:stop], (0, pad), constant_values=n_bins)  # padding: dropped bin
        rs = None if ref is None else np.pad(ref[start:stop], ((0, pad), (0, 0)))
        out = _chunk(sae, xs, ids, W, scale, rs, n_bins=n_bins, centre=centre)
        n_b, mean_b, m2_b, active_b, ref_b = (np.asarray(v, np.float64) for v in out)
        total = count + n_b
        w = np.divide(n_b, total, out=np.zeros_like(total), where=total > 0)[:, None]
        delta = mean_b - mean
        m2 += m2_b + delta**2 * (count * w[:, 0])[:, None]
        mean += delta * w
        count = total
        active += active_b
        ref_sum += ref_b
    return mean, m2, active, ref_sum / count[:, None]


def _fit_masks(profiles, effects, masks, reference):
    """The offset c for each subset of members (boolean ``masks``, (S, m)): Newton on the convex
    mean KL, with the best of a few step lengths per step so that no step goes uphill.

    Members and subsets are padded to powers of two (padding members have zero profiles and are
    never in a subset), so that families of every size share a few compiled shapes: one per
    (family size, subset count) compiled 37 times in the quick toy-model sweep.
    """
    S, m = masks.shape
    M = max(8, pow2(m))
    rows = max(M, pow2(S))
    profiles = jnp.pad(profiles, ((0, 0), (0, M - m)))
    effects = jnp.pad(effects, ((0, M - m), (0, 0)))
    masks = jnp.pad(jnp.asarray(masks), ((0, rows - S), (0, M - m)))
    return tuple(v[:S] for v in _fit_masks_padded(profiles, effects, masks, reference))


@jax.jit
def _fit_masks_padded(profiles, effects, masks, reference):
    steps = jnp.asarray(STEP_LENGTHS, reference.dtype)

    def one(mask):
        z = (profiles * mask) @ effects
        loss = lambda c: jnp.mean(kl(reference, jax.nn.log_softmax(c + z, axis=-1)))
        c0 = jnp.log(jnp.maximum(reference.mean(0), 1e-30)) - z.mean(0)

        def step(c, _):
            q = jax.nn.softmax(c + z, axis=-1)
            g = (q - reference).mean(0)
            h = jnp.mean(jax.vmap(jnp.diag)(q), 0) - jnp.einsum("ti,tj->ij", q, q) / q.shape[0]
            # Softmax is blind to adding a constant to c: the ridge and the centring fix it.
            h = h + (1e-9 + 1e-6 * jnp.trace(h) / h.shape[0]) * jnp.eye(h.shape[0])
            d = jnp.linalg.solve(h, g)
            d = d - d.mean()
            trial = jax.vmap(loss)(c[None] - steps[:, None] * d)
            best = jnp.argmin(trial)
            now = loss(c)
            # Near the optimum a Newton step gains less than the loss's rounding: take the full
            # step while it does not go up by more than that, else the best shorter one.
            slack = 8 * jnp.finfo(now.dtype).eps * (1 + jnp.abs(now))
            full = trial[0] <= now + slack
            step_to = jnp.where(full, c - d, c - steps[best] * d)
            return jnp.where(full | (trial[best] < now), step_to, c), None

        c, _ = jax.lax.scan(step, c0, None, length=NEWTON_STEPS)
        g = (jax.nn.softmax(c + z, axis=-1) - reference).mean(0)
        return c, loss(c), jnp.max(jnp.abs(g))

    return jax.vmap(one)(masks.astype(profiles.dtype))


def _search(fit, reference, m: int) -> tuple[np.ndarray, list[np.ndarray], str]:
    """Best mean KL per sub-family size, and the best subset of each size (member positions)."""
    n = reference.shape[1]
    if m <= EXHAUSTIVE_MAX and 2**m * n**3 <= EXHAUSTIVE_WORK:
        masks = np.array(list(itertools.product([False, True], repeat=m)), bool).reshape(2**m, m)
        losses = np.asarray(fit(jnp.asarray(masks), reference)[1], np.float64)
        sizes = masks.sum(axis=1)
        size_kl, best = np.full(m + 1, np.inf), []
        for s in range(m + 1):
            i = np.flatnonzero(sizes == s)
            j = i[np.argmin(losses[i])]
            size_kl[s] = losses[j]
            best.append(np.flatnonzero(masks[j]))
        return size_kl, best, "exhaustive"
    chosen: list[int] = []
    size_kl = [float(fit(jnp.zeros((1, m), bool), reference)[1][0])]
    best = [np.array([], int)]
    for _ in range(m):
        rest = [j for j in range(m) if j not in chosen]
        # Always m rows (the last candidate repeated), so that the jitted fit compiles once per
        # family size, not once per step.
        masks = np.zeros((m, m), bool)
        masks[:, chosen] = True
        masks[np.arange(m), (rest + rest[-1:] * m)[:m]] = True
        losses = np.asarray(fit(jnp.asarray(masks), reference)[1])[: len(rest)]
        chosen.append(rest[int(np.argmin(losses))])
        size_kl.append(float(losses.min()))
        best.append(np.array(sorted(chosen)))
    size_kl = np.asarray(size_kl)
    # Contributions are added whole, not scaled, so two features that cancel each other's large
    # parts help only together, and forward selection never takes the first. The prefixes in
    # share order (members come sorted by share) take such pairs together: keep the better.
    prefixes = np.tri(m + 1, m, -1, dtype=bool)
    prefix_kl = np.asarray(fit(jnp.asarray(prefixes), reference)[1], np.float64)
    better = np.flatnonzero(prefix_kl < size_kl)
    size_kl[better] = prefix_kl[better]
    for s in better:
        best[s] = np.arange(s)
    return size_kl, best, "greedy"


def plot_family(
    family: FeatureFamily,
    *,
    pair: tuple[int, int] | None = None,
    token_names: Sequence[str] | None = None,
    latent_name: str = "latent t",
    title: str | None = None,
):
    """Three panels: encoder profiles, decoder logit effects, and contributions to a log-ratio.

    Args:
      family: a :class:`FeatureFamily`.
      pair: positions (j, m) in ``family.tokens`` of the log-ratio ``log q_j / q_m`` in the third
        panel; default: the pair whose reference log-ratio spans the widest range.
      token_names: labels for ``family.tokens`` (default: the ids).
      latent_name: the x-axis label, with units, e.g. ``"temperature (°C)"``.
      title: what the family is of (the model, the SAE), put before the figure's title.

    Returns:
      a :class:`matplotlib.figure.Figure` (built without pyplot; save it with ``savefig``).

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> t = np.linspace(0, 1, 100)
      >>> x = np.stack([np.maximum(t - 0.5, 0), t], 1)
      >>> sae = SAE(jnp.eye(2), jnp.zeros(2), jnp.eye(2), jnp.zeros(2))
      >>> fam = feature_family(sae, x, t, jnp.array([[2.0, 0.0], [0.0, 1.0]]), tokens=[0, 1],
      ...                      tol=1e-3, count=False)
      >>> len(plot_family(fam).axes)
      3
    """
    import matplotlib
    from matplotlib.figure import Figure

    n = family.tokens.size
    names = [str(i) for i in family.tokens] if token_names is None else list(token_names)
    if len(names) != n:
        raise ValueError(f"token_names has {len(names)} names; the family has {n} tokens.")
    log_ref = clipped_log_probs(np.asarray(family.reference, np.float64))
    if pair is None:
        spans = np.ptp(log_ref[:, :, None] - log_ref[:, None, :], axis=0)
        j, m = np.unravel_index(np.argmax(spans), spans.shape)
    else:
        j, m = pair
        if not (0 <= j < n and 0 <= m < n and j != m):
            raise ValueError(f"pair={pair!r} must be two different positions in 0..{n - 1}.")
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_prof, ax_dec, ax_ratio = fig.subplots(1, 3)
    # Ten distinct colours, then twenty: large families (SAEs tile) stay readable.
    size = family.members.size
    tab20 = matplotlib.colormaps["tab20"]
    colours = [f"C{i}" if size <= 10 else tab20(i % 20) for i in range(size)]
    labels = [f"feature {i}" for i in family.members]
    for i, (c, lab) in enumerate(zip(colours, labels, strict=True)):
        ax_prof.plot(family.grid, family.profiles[:, i], "o-", ms=3, color=c, label=lab)
    ax_prof.set(
        title="Encoder: activation profiles a_i(t)",
        xlabel=latent_name,
        ylabel="mean activation per bin (SAE units)",
    )
    centred = family.effects - family.effects.mean(axis=1, keepdims=True)
    width = 0.8 / max(family.members.size, 1)
    for i, (c, lab) in enumerate(zip(colours, labels, strict=True)):
        ax_dec.bar(np.arange(n) + (i + 0.5) * width - 0.4, centred[i], width, color=c, label=lab)
    ax_dec.axhline(0, color="0.5", lw=0.8)
    ax_dec.set_xticks(np.arange(n), names, rotation=45 if n > 6 else 0)
    ax_dec.set(
        title="Decoder: logit effect l_i (centred over tokens)",
        xlabel="token",
        ylabel="logit change per unit activation (nats)",
    )
    for i, c in enumerate(colours):
        contribution = family.profiles[:, i] * (family.effects[i, j] - family.effects[i, m])
        ax_ratio.plot(family.grid, contribution, "-", color=c)
    log_q = np.log(np.maximum(family.curve, 1e-300))
    # The reference is drawn wide and pale underneath, so that a family matching it leaves both
    # visible.
    ax_ratio.plot(
        family.grid,
        log_ref[:, j] - log_ref[:, m],
        "-",
        color="0.75",
        lw=5,
        label="reference",
        zorder=1,
    )
    ax_ratio.plot(family.grid, log_q[:, j] - log_q[:, m], "k-", lw=1.5, label="family total")
    ax_ratio.set(
        title=f"Contributions to log q({names[j]}) / q({names[m]})",
        xlabel=latent_name,
        ylabel="log-ratio (nats)",
    )
    # The colours are the same in every panel: one legend for the features, beside the figure.
    if family.members.size:
        fig.legend(
            *ax_prof.get_legend_handles_labels(),
            loc="outside right upper",
            fontsize=8,
            ncols=1 + size // 24,
        )
    ax_ratio.legend(fontsize=8)
    fig.suptitle(
        (f"{title}: " if title else "")
        + f"feature family of {family.members.size} members, mean KL {family.kl:.2g} nats to "
        f"the {family.reference_source} reference"
    )
    return fig
