"""Tests for the certified segmentation bound (jaxfeat/bounds.py); the sup-norm bounds are in
test_theory.py and test_theory_properties.py beside the theorems they rest on.

Grids are kept to a few sizes (up to 32 points share one compiled block kernel; 128 points for
the fitted oscillating curve, as in the docstring example) because every new size compiles again.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import logsumexp

import jaxfeat
from jaxfeat import bounds
from jaxfeat.bounds import segmentation_lower_bound

# ---------------------------------------------------------------------------------------------
# Helpers


def _random_target(seed: int, T: int = 7, V: int = 3, zeros: bool = False) -> jaxfeat.Target:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 1, T))
    z = rng.normal(0, 1.5, (T, V)) + np.outer(t, rng.normal(0, 2, V))
    if zeros:
        z[rng.uniform(size=(T, V)) < 0.25] = -1e4  # exact zeros in float32
        z[:, 0] = 0.0  # keep every row non-empty
    return jaxfeat.Target.from_logits(t, z)


def _probs64(target: jaxfeat.Target) -> np.ndarray:
    p = np.asarray(target.probs, np.float64)
    return p / p.sum(axis=1, keepdims=True)


def _mean_kl64(p: np.ndarray, z: np.ndarray) -> float:
    """Mean KL(p || softmax(z)) in float64 with 0 log 0 = 0."""
    logq = z - logsumexp(z, axis=1, keepdims=True)
    logp = np.log(np.where(p > 0, p, 1.0))
    return float(np.mean(np.sum(np.where(p > 0, p * (logp - logq), 0.0), axis=1)))


def _block_cost_scipy(t: np.ndarray, p: np.ndarray) -> float:
    """min over (alpha, beta) of sum_t KL(p_t || softmax(alpha + beta t)), by BFGS."""
    V = p.shape[1]
    x = (t - t.mean()) / (np.ptp(t) / 2)
    plogp = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))

    def f(th):
        a = np.concatenate([[0.0], th[: V - 1]])  # token 0 as the reference logit
        b = np.concatenate([[0.0], th[V - 1 :]])
        z = a + np.outer(x, b)
        lse = logsumexp(z, axis=1)
        q = np.exp(z - lse[:, None])
        val = plogp + lse.sum() - np.sum(p * z)
        g = q - p
        return val, np.concatenate([g.sum(0)[1:], (x @ g)[1:]])

    res = minimize(
        f,
        np.zeros(2 * (V - 1)),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-12, "maxiter": 10_000},
    )
    return float(res.fun)


def _brute_force(C: np.ndarray, blocks: int) -> float:
    T = C.shape[0]
    best = np.inf
    for cuts in itertools.combinations(range(1, T), blocks - 1):
        edges = (0, *cuts, T)
        best = min(best, sum(C[a, b - 1] for a, b in itertools.pairwise(edges)))
    return best


def _model(seed: int, k: int, activation: str = "relu", T: int = 24):
    """A k-feature model with well-separated knots inside the grid (pieces of 4 or more points)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, T)
    idx = np.round(np.linspace(0, T - 1, k + 2)[1:-1]).astype(int) + rng.integers(-1, 2, k)
    knots = (t[idx] + t[idx + 1]) / 2
    s = rng.choice([-1.0, 1.0], k)
    theta = rng.uniform(0.05, 0.3, k) if activation == "jumprelu" else None
    params = jaxfeat.Features.create(
        c=rng.normal(0, 1, 3).astype(np.float32),
        l=rng.normal(0, 4, (k, 3)).astype(np.float32),
        w=s.astype(np.float32),
        b=(-s * knots).astype(np.float32),
        theta=theta,
    )
    return t, params


def _violates(bound: float, model_kl: float) -> bool:
    """The soundness check: a lower bound may never exceed a model's actual mean KL."""
    return bound > model_kl + 1e-12


# ---------------------------------------------------------------------------------------------
# Dynamic program and block costs


def test_dp_matches_brute_force_on_random_costs():
    rng = np.random.default_rng(0)
    T = 8
    C = np.triu(rng.exponential(size=(T, T)))
    C[np.tril_indices(T, -1)] = np.inf
    best, start = bounds._partitions(C, T)
    for m in range(1, T + 1):
        assert best[m - 1, -1] == pytest.approx(_brute_force(C, m), rel=1e-12)
        cuts = bounds._backtrack(start, m)
        edges = (0, *cuts.tolist(), T)
        assert sum(C[a, b - 1] for a, b in itertools.pairwise(edges)) == pytest.approx(
            best[m - 1, -1], rel=1e-12
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_dp_matches_brute_force_on_block_costs(seed):
    tgt = _random_target(seed)
    lower, _ = bounds._block_costs(np.asarray(tgt.t), _probs64(tgt)[:, None])
    best, _ = bounds._partitions(lower, 7)
    for m in range(1, 8):
        assert best[m - 1, -1] == pytest.approx(_brute_force(lower, m), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_costs_match_independent_solver(seed):
    tgt = _random_target(seed)
    t, p = np.asarray(tgt.t, np.float64), _probs64(tgt)
    lower, primal = bounds._block_costs(t, p[:, None])
    T = t.size
    for i in range(T):
        for j in range(i, T):
            if j - i < 2:  # two points are always interpolated exactly
                assert lower[i, j] == primal[i, j] == 0.0
                continue
            ref = _block_cost_scipy(t[i : j + 1], p[i : j + 1])
            assert lower[i, j] <= ref + 1e-10  # certified from below
            assert primal[i, j] <= ref + 1e-10  # at least as good as BFGS
            assert lower[i, j] == pytest.approx(ref, rel=1e-6, abs=1e-9)  # and tight
    assert np.all(np.isinf(lower[np.tril_indices(T, -1)]))


def test_block_costs_with_zero_probabilities():
    tgt = _random_target(3, zeros=True)
    t, p = np.asarray(tgt.t, np.float64), _probs64(tgt)
    p[1:, 2] = 0.0  # token 2 only at the first point: the optimum lies at infinity
    p[0, 2] = 0.3
    p /= p.sum(axis=1, keepdims=True)
    lower, primal = bounds._block_costs(t, p[:, None])
    upper = np.triu_indices(t.size)
    assert np.all(np.isfinite(lower[upper])) and np.all(np.isfinite(primal[upper]))
    assert np.all(lower[upper] >= 0) and np.all(primal[upper] - lower[upper] < 1e-10)
    for i, j in [(0, 6), (0, 3), (1, 4), (2, 6)]:
        ref = _block_cost_scipy(t[i : j + 1], p[i : j + 1])  # a finite point, above the infimum
        assert lower[i, j] <= ref + 1e-10
        assert lower[i, j] == pytest.approx(ref, abs=1e-5)


def test_bound_on_count_data_is_tightly_certified():
    # Maximum-likelihood rows from few counts are full of exact zeros.
    base = jaxfeat.targets.oscillating(1, n=24)
    rng = np.random.default_rng(0)
    counts = np.stack(
        [rng.multinomial(10, row / row.sum()) for row in np.asarray(base.probs, np.float64)]
    )
    tgt = jaxfeat.Target.from_counts(base.t, counts)
    assert np.mean(np.asarray(tgt.probs) == 0) > 0.1
    sb = segmentation_lower_bound(tgt, 6)
    assert sb.solver_tol < 1e-9 and np.all(np.diff(sb.bounds) <= 0) and sb.bounds[0] > 0


# ---------------------------------------------------------------------------------------------
# Soundness: the bound never exceeds the mean KL of an actual k-feature model


CASES = [(seed, k, act) for seed in range(6) for k in (1, 2, 3) for act in ("relu", "jumprelu")]


@pytest.mark.parametrize(("seed", "k", "activation"), CASES)
def test_bound_is_sound_for_k_feature_models(seed, k, activation):
    t, params = _model(seed, k, activation)
    z = np.asarray(jaxfeat.logits(params, t, activation), np.float64)
    exact = jaxfeat.Target(t, jaxfeat.probs(params, t, activation), normalize=True)
    rng = np.random.default_rng(100 + seed)
    noisy = jaxfeat.Target.from_logits(t, z + rng.normal(0, 0.5, z.shape))
    # Counts sampled from the model: exact zeros, some at the ends of blocks.
    q = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    counts = jaxfeat.Target.from_counts(t, np.stack([rng.multinomial(20, row) for row in q]))
    for tgt in (exact, noisy, counts):
        sb = segmentation_lower_bound(tgt, 4, activation)
        model_kl = _mean_kl64(_probs64(tgt), z)
        assert not _violates(sb.bounds[k - 1], model_kl)
        assert np.all(np.diff(sb.bounds) <= 0) and np.all(sb.bounds >= 0)
        assert sb.solver_tol < 1e-8
        if tgt is not exact:  # not vacuous: k + 1 affine blocks fit away only part of the noise
            assert sb.bounds[k - 1] > 0.2 * model_kl


@pytest.mark.parametrize("seed", range(6))
def test_soundness_check_rejects_wrong_bounds(seed):
    """The check above has teeth: two plausible-looking but invalid bounds fail it."""
    for k in (1, 2, 3):
        t, params = _model(seed, k)
        z = np.asarray(jaxfeat.logits(params, t), np.float64)
        tgt = jaxfeat.Target(t, jaxfeat.probs(params, t), normalize=True)
        p = _probs64(tgt)
        model_kl = _mean_kl64(p, z)
        T = t.size
        lower, _ = bounds._block_costs(t, p[:, None])
        # Wrong 1: one block too few (k blocks for k features).
        too_few = bounds._partitions(lower, k)[0][k - 1, -1] / T
        # Wrong 2: no min over beta (blocks of constant logits): cost = sum KL(p_t || block mean).
        const = np.full((T, T), np.inf)
        for i in range(T):
            for j in range(i, T):
                mean = np.log(p[i : j + 1].mean(axis=0))[None]
                const[i, j] = (j - i + 1) * _mean_kl64(p[i : j + 1], mean)
        no_slope = bounds._partitions(const, k + 1)[0][k, -1] / T
        right = bounds._partitions(lower, k + 1)[0][k, -1] / T
        assert not _violates(right, model_kl)
        assert _violates(too_few, model_kl)
        assert _violates(no_slope, model_kl)


# ---------------------------------------------------------------------------------------------
# segmentation_lower_bound


def test_segmentation_result_structure():
    tgt = _random_target(4)  # T = 7: k_max beyond T - 1 leaves single-point blocks
    sb = segmentation_lower_bound(tgt, 9)
    t = np.asarray(tgt.t)
    assert sb.bounds.shape == (9,) and np.all(np.diff(sb.bounds) <= 0)
    assert np.all(sb.bounds[5:] == 0.0)
    for k in range(1, 10):
        b, kn = sb.boundaries[k - 1], sb.knots[k - 1]
        assert b.shape == (k,) and kn.shape == (k,)
        assert np.all(np.diff(b) >= 0) and b.min() >= 1 and b.max() <= t.size - 1
        np.testing.assert_allclose(kn, (t[b - 1] + t[b]) / 2)
    assert 0 <= sb.solver_tol < 1e-8 and sb.seconds > 0


def test_subgrid_gives_a_weaker_valid_bound(monkeypatch):
    t, params = _model(0, 2)
    z = np.asarray(jaxfeat.logits(params, t), np.float64)
    noisy = jaxfeat.Target.from_logits(t, z + np.random.default_rng(0).normal(0, 0.5, z.shape))
    full = segmentation_lower_bound(noisy, 4)
    sub = segmentation_lower_bound(noisy, 4, subgrid=8)
    assert np.all(sub.bounds <= full.bounds + 1e-12) and np.all(sub.bounds[:2] > 0)
    assert sub.bounds[1] <= _mean_kl64(_probs64(noisy), z)
    assert all(np.isin(b, np.arange(0, 24, 3)).all() for b in sub.boundaries)
    # Long grids switch to sub-grids on their own: 24 points cost ~(24/16)^3 = 3.4x the work
    # of 16, so two sub-grids of 12.
    monkeypatch.setattr(bounds, "AUTO_SUBGRID", 16)
    np.testing.assert_array_equal(
        segmentation_lower_bound(noisy, 4).bounds,
        segmentation_lower_bound(noisy, 4, subgrid=12).bounds,
    )


def test_segmentation_bad_inputs():
    tgt = _random_target(0)
    with pytest.raises(ValueError, match="softplus"):
        segmentation_lower_bound(tgt, 3, "softplus")
    with pytest.raises(ValueError, match="activation"):
        segmentation_lower_bound(tgt, 3, "gelu")
    with pytest.raises(ValueError, match="k_max"):
        segmentation_lower_bound(tgt, 0)
    with pytest.raises(ValueError, match="subgrid"):
        segmentation_lower_bound(tgt, 3, subgrid=1)
    with pytest.raises(ValueError, match="Target"):
        segmentation_lower_bound(np.zeros((7, 3)), 3)


# ---------------------------------------------------------------------------------------------
# Token buckets (large vocabularies)


def _wide_model(seed: int, k: int, V: int, T: int = 24):
    """A k-feature model on V tokens: logit scale as for real vocabularies (std 2)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, T)
    idx = np.round(np.linspace(0, T - 1, k + 2)[1:-1]).astype(int)
    s = rng.choice([-1.0, 1.0], k)
    params = jaxfeat.Features.create(
        c=rng.normal(0, 2, V).astype(np.float32),
        l=rng.normal(0, 3, (k, V)).astype(np.float32),
        w=s.astype(np.float32),
        b=(-s * (t[idx] + t[idx + 1]) / 2).astype(np.float32),
    )
    return t, params


@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 3),
    V=st.integers(50, 500),
    noise=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_bucketed_bound_is_sound_for_k_feature_models(seed, k, V, noise):
    # The default bound past AUTO_BUCKET_VOCAB tokens: round-robin buckets of 32 tokens, with
    # sub-grids past its work budget. It must stay below the mean KL of the k-feature model itself,
    # on the model's curve and on noisy versions of it.
    t, params = _wide_model(seed, k, V)
    z = np.asarray(jaxfeat.logits(params, t), np.float64)
    z = z + np.random.default_rng(seed + 1).normal(0, noise, z.shape)
    tgt = jaxfeat.Target.from_logits(t, z)
    clean = np.asarray(jaxfeat.logits(params, t), np.float64)
    sb = segmentation_lower_bound(tgt, 4)
    model_kl = _mean_kl64(_probs64(tgt), clean)
    assert not _violates(sb.bounds[k - 1], model_kl)
    assert np.all(np.diff(sb.bounds) <= 0) and np.all(sb.bounds >= 0)
    if noise >= 1.0:  # not vacuous: noise no k + 1 affine blocks can fit
        assert sb.bounds[k - 1] > 0.1 * model_kl


def test_bucket_soundness_check_rejects_unweighted_buckets():
    """The check above has teeth: bucket costs without their mass weights p_t(b) overstate."""
    t, params = _wide_model(0, 2, 60)
    z = np.asarray(jaxfeat.logits(params, t), np.float64)
    noisy = z + np.random.default_rng(1).normal(0, 1.0, z.shape)
    tgt = jaxfeat.Target.from_logits(t, noisy)
    p = _probs64(tgt)
    model_kl = _mean_kl64(p, z)
    buckets = bounds.token_buckets(tgt, 8)
    pb = bounds._bucketed(p, buckets)
    right = bounds._partitions(bounds._block_costs(t, pb)[0], 3)[0][2, -1] / t.size
    # Wrong: every bucket's conditional rows, each weighted 1 instead of its mass.
    mass = pb.sum(axis=2, keepdims=True)
    unweighted = pb / mass / pb.shape[1]
    wrong = bounds._block_costs(t, unweighted)[0] * pb.shape[1]
    wrong = bounds._partitions(wrong, 3)[0][2, -1] / t.size
    assert not _violates(right, model_kl)
    assert _violates(wrong, model_kl)


def test_one_bucket_is_the_exact_bound_and_buckets_are_weaker():
    tgt = _random_target(5, T=16, V=12)
    auto = segmentation_lower_bound(tgt, 4)  # V <= AUTO_BUCKET_VOCAB: one bucket
    assert (auto.buckets, auto.subgrids) == (1, 1)
    exact = auto.bounds
    one = segmentation_lower_bound(tgt, 4, buckets=[np.arange(12)]).bounds
    np.testing.assert_array_equal(exact, one)
    for size in (3, 6):
        sb = segmentation_lower_bound(tgt, 4, buckets=bounds.token_buckets(tgt, size))
        assert sb.buckets == 12 // size
        split = sb.bounds
        assert np.all(split <= exact + 1e-12) and split[0] > 0.2 * exact[0]
    # Dropping tokens keeps a bound, a weaker one.
    top = segmentation_lower_bound(tgt, 4, buckets=bounds.token_buckets(tgt, 6, 6)).bounds
    assert np.all(top <= split + 1e-12)


def test_token_buckets_deal_tokens_round_robin():
    tgt = _random_target(6, T=8, V=10)
    order = np.argsort(-np.asarray(tgt.probs, np.float64).mean(axis=0), kind="stable")
    b = bounds.token_buckets(tgt, 4)
    assert [x.size for x in b] == [4, 3, 3]
    np.testing.assert_array_equal(np.concatenate(b), order[np.r_[0:10:3, 1:10:3, 2:10:3]])
    assert [x.size for x in bounds.token_buckets(tgt, 4, max_tokens=5)] == [3, 2]
    with pytest.raises(ValueError, match="size=1 must be at least 2"):
        bounds.token_buckets(tgt, 1)


@pytest.mark.parametrize(
    ("buckets", "match"),
    [
        ([np.array([0, 1]), np.array([1, 2])], r"buckets\[1\] repeats a token"),
        ([np.array([0, 7])], r"buckets\[0\] has a token index outside 0..2"),
        ([np.array([0.0, 1.0])], r"buckets\[0\] must be a non-empty 1-d array"),
        ([], "buckets is empty"),
    ],
)
def test_bad_buckets_are_named(buckets, match):
    with pytest.raises(ValueError, match=match):
        segmentation_lower_bound(_random_target(0), 2, buckets=buckets)


# ---------------------------------------------------------------------------------------------
# continuity_lower_bound


def _relu_model(seed: int, k: int, T: int, V: int = 3):
    """A k-feature ReLU model over V tokens with knots anywhere: some in one gap, at grid points,
    or outside."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, T)
    knots = rng.uniform(-0.1, 1.1, k)
    if k >= 2 and rng.random() < 0.3:  # two knots in one gap: a free break
        knots[1] = knots[0] + rng.uniform(0, 0.5) / (T - 1)
    if rng.random() < 0.3:
        knots[0] = t[rng.integers(1, T - 1)]  # a knot on a grid point
    s = rng.choice([-1.0, 1.0], k)
    params = jaxfeat.Features.create(
        c=rng.normal(0, 1, V),
        l=rng.normal(0, 3, (k, V)),
        w=s * rng.uniform(0.5, 2.0, k),
        b=-s * rng.uniform(0.5, 2.0, k) * knots,
    )
    return t, params


def _continuity_cases(seed, k, noise, T=20, V=3):
    t, params = _relu_model(seed, k, T, V)
    z = np.asarray(jaxfeat.logits(params, t), np.float64)
    rng = np.random.default_rng(1000 + seed)
    tgt = jaxfeat.Target.from_logits(t, z + rng.normal(0, noise, z.shape))
    return tgt, _mean_kl64(_probs64(tgt), z)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 4),
    noise=st.sampled_from([0.0, 0.05, 0.3]),
    pruned=st.booleans(),
    V=st.sampled_from([3, 16]),
)
def test_continuity_bound_is_sound_for_relu_models(seed, k, noise, pruned, V):
    # Pruned at just above the model's own loss: the joins on its partition are all priced, the
    # hardest place for a bound to stay below. With 16 tokens the priced blocks' Newton steps
    # take the low-rank (Woodbury) solve.
    tgt, model_kl = _continuity_cases(seed, k, noise, V=V)
    tol = max(model_kl, 1e-6) * 1.1 if pruned else None
    cb = bounds.continuity_lower_bound(tgt, k, tol=tol)
    assert not _violates(cb.bound, model_kl)
    assert cb.bound >= cb.plain - 1e-15 and cb.plain >= 0


@pytest.mark.parametrize("seed", range(4))
def test_continuity_bound_is_sound_on_count_data_with_zeros(seed):
    # Counts sampled from a ReLU model: tokens absent at some points, where the multipliers
    # must leave them alone (and sum to zero over the rest).
    t, params = _relu_model(seed, 3, 20)
    z = np.asarray(jaxfeat.logits(params, t), np.float64)
    q = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    rng = np.random.default_rng(seed)
    counts = np.stack([rng.multinomial(12, row) for row in q])
    tgt = jaxfeat.Target.from_counts(t, counts)
    model_kl = _mean_kl64(_probs64(tgt), z)
    cb = bounds.continuity_lower_bound(tgt, 3)
    assert np.any(counts == 0) and not _violates(cb.bound, model_kl)


def _off_centre_model(seed: int, k: int = 3, T: int = 20, V: int = 3):
    """An exact k-feature ReLU target whose knots sit at 15% of their gaps, not in the middle."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, T)
    idx = np.round(np.linspace(0, T - 1, k + 2)[1:-1]).astype(int)
    knots = t[idx] + 0.15 * (t[1] - t[0])
    s = rng.choice([-1.0, 1.0], k)
    params = jaxfeat.Features.create(
        c=rng.normal(0, 1, V), l=rng.normal(0, 4, (k, V)), w=s, b=-s * knots
    )
    z = np.asarray(jaxfeat.logits(params, t), np.float64)
    tgt = jaxfeat.Target.from_logits(t, z)
    return tgt, _mean_kl64(_probs64(tgt), z)


def test_continuity_check_rejects_a_knot_fixed_at_the_gaps_midpoint(monkeypatch):
    """The check above has teeth: pricing every join with the knot at the middle of its gap
    (instead of the worse end of each piece) is not a bound; on exact models with off-centre
    knots it exceeds their loss of zero."""

    def middle(t, e, splits):
        centre = (t[e] + t[np.minimum(e + 1, t.size - 1)]) / 2
        return np.broadcast_to(centre[:, None, None], (e.size, splits, 2)).copy()

    caught = 0
    for seed in range(3):
        tgt, model_kl = _off_centre_model(seed)
        right = bounds.continuity_lower_bound(tgt, 3)
        assert not _violates(right.bound, model_kl)
        with monkeypatch.context() as m:
            m.setattr(bounds, "_knot_positions", middle)
            wrong = bounds.continuity_lower_bound(tgt, 3)
        caught += _violates(wrong.bound, model_kl)
    assert caught >= 2


def test_continuity_bound_tightens_the_segmentation_bound_at_coarse_tolerances():
    # oscillating(1) with 2 features: three long pieces, whose joins cost the most.
    tgt = jaxfeat.targets.oscillating(1, n=32)
    cb = bounds.continuity_lower_bound(tgt, 2, tol=5e-2, decide=False)
    plain = segmentation_lower_bound(tgt, 2).bounds[1]
    assert cb.plain == pytest.approx(plain, rel=1e-9)
    assert cb.bound > 1.5 * cb.plain and cb.joins > 0 and cb.triples > 0


@pytest.mark.parametrize("certified", [True, False])
def test_continuity_decide_settles_the_same_answer(certified):
    # Just above the plain bound the split values already certify; at twice the full bound the
    # upper estimate rules certification out. Either way no triple is solved, the answer to
    # "bound > tol" is the full computation's, and the early bound is no higher (both are valid).
    tgt = jaxfeat.targets.oscillating(1, n=32)
    full0 = bounds.continuity_lower_bound(tgt, 2, tol=5e-2, decide=False)
    tol = 1.2 * full0.plain if certified else 2.0 * full0.bound
    full = bounds.continuity_lower_bound(tgt, 2, tol=tol, decide=False)
    early = bounds.continuity_lower_bound(tgt, 2, tol=tol)
    assert full.triples > 0 and early.triples == 0
    assert (early.bound > tol) == (full.bound > tol) == certified
    assert full.plain <= early.bound <= full.bound + 1e-15


@pytest.mark.parametrize("ratio", [0.97, 1.03])
def test_continuity_decide_stops_solving_triples_once_settled(monkeypatch, ratio):
    # Near the full bound neither early test settles, so the triples are solved, in groups of
    # knot options. Below it (certified) every option must be solved, since a stop would deny
    # the certificate; above it the upper estimate reaches tol before the last group, and the
    # solved part is returned: the same answer for fewer priced blocks.
    tgt = jaxfeat.targets.oscillating(1, n=48)
    tol = ratio * bounds.continuity_lower_bound(tgt, 3, tol=5e-2, decide=False).bound
    priced = []
    blocks = bounds._priced_blocks
    monkeypatch.setattr(
        bounds,
        "_priced_blocks",
        lambda t, p, a, *rest: priced.append(a.size) or blocks(t, p, a, *rest),
    )
    full = bounds.continuity_lower_bound(tgt, 3, tol=tol, decide=False)
    n_full, priced[:] = sum(priced), []
    early = bounds.continuity_lower_bound(tgt, 3, tol=tol)
    assert early.triples == full.triples > 0
    assert (early.bound > tol) == (full.bound > tol) == (ratio < 1)
    assert full.plain <= early.bound <= full.bound + 1e-15
    if ratio > 1:
        assert sum(priced) < 0.8 * n_full
    else:
        assert early.bound == full.bound


def _kernel_blocks(seed: int, zeros: bool, n: int = 24, V: int = 16, P: int = 8):
    """Inputs of ``_block_kernel`` for n random blocks of 3 to P points over V tokens, with a
    small linear term on the tokens present at every point."""
    rng = np.random.default_rng(seed)
    L = rng.integers(3, P + 1, n)
    mask = np.arange(P)[None] < L[:, None]
    x = np.where(mask, -1.0 + 2.0 * np.arange(P)[None] / np.maximum(L[:, None] - 1, 1), 0.0)
    z = rng.normal(0, 1, (n, V, 1)) + rng.normal(0, 2, (n, V, 1)) * x[:, None]
    p = np.exp(z + rng.normal(0, 0.5, z.shape))
    if zeros:
        p[:, 1:][rng.uniform(size=p[:, 1:].shape) < 0.15] = 0.0
    p = p / p.sum(axis=1, keepdims=True)
    everywhere = np.all((p > 0) | ~mask[:, None], axis=-1)  # (n, V)
    # A term small against each token's mass in the block keeps the minimum finite.
    mass = np.sum(p * mask[:, None], axis=-1) * everywhere  # (n, V)
    lin = rng.normal(0, 0.1, (n, 2, V)) * mass[:, None]
    lin -= mass[:, None] * lin.sum(-1, keepdims=True) / mass.sum(-1)[:, None, None]
    return x, p, mask, np.zeros((n, 2, V)), np.zeros(n, bool), lin


@pytest.mark.parametrize("zeros", [False, True])
def test_low_rank_newton_step_matches_the_direct_solve(zeros):
    # The Woodbury step must solve the same system to rounding: the certificate's dual point is
    # feasible only for an exact solve.
    from jaxfeat._arrays import x64

    args = _kernel_blocks(0, zeros)
    with x64():
        direct, low = (
            [np.asarray(a) for a in bounds._block_kernel(*args, max_iter=30, low_rank=lr)]
            for lr in (False, True)
        )
    ok = np.isfinite(direct[1])
    assert ok.mean() > 0.5 and np.array_equal(ok, np.isfinite(low[1]))
    np.testing.assert_allclose(low[0][ok], direct[0][ok], rtol=1e-10, atol=1e-12)  # primal
    np.testing.assert_allclose(low[1][ok], direct[1][ok], rtol=1e-10, atol=1e-12)  # certificates
    assert np.all(low[1][ok] <= low[0][ok] + 1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k=0"),
        ({"k": 2, "tol": 0.0}, "tol"),
        ({"k": 2, "splits": 0}, "splits"),
        ({"k": 2, "max_joins": -1}, "max_joins"),
        ({"k": 2, "max_triples": -1}, "max_triples"),
        ({"k": 2, "decide": 1}, "decide"),
    ],
)
def test_continuity_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bounds.continuity_lower_bound(_random_target(0), **kwargs)


# ---------------------------------------------------------------------------------------------
# Directions of the segmentation's knots


@pytest.mark.parametrize("seed", range(4))
def test_knot_directions_make_the_first_slope_reachable(seed):
    # For a ReLU path with every knot inside the grid, s_0 = -sum of the slope changes at the
    # left-facing knots (THEORY.md, item 7): the directions found for its own slopes satisfy it,
    # where all-right-facing knots (the old start) do not.
    rng = np.random.default_rng(seed)
    k, V = 5, 3
    delta = rng.normal(0, 2, (k, V))
    left = rng.random(k) < 0.5
    left[0] = True
    s0 = -delta[left].sum(axis=0)
    slopes = np.concatenate([s0[None], s0 + np.cumsum(delta, axis=0)])
    slopes = slopes - slopes.mean(axis=1, keepdims=True)
    dirs = bounds._facing(slopes)
    residual = lambda d: slopes[0] + np.diff(slopes, axis=0)[d < 0].sum(axis=0)
    assert np.abs(residual(dirs)).max() < 1e-9
    assert np.abs(residual(np.ones(k))).max() > 1e-3
    sb = segmentation_lower_bound(_random_target(seed, T=12), 4)
    assert all(
        set(np.unique(d)) <= {-1.0, 1.0} and d.size == kk
        for kk, d in enumerate(sb.directions, start=1)
    )
