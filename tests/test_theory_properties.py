"""Hypothesis property tests for jaxfeat.theory, each paired with a counter-test.

Every property is checked by a plain function that returns a violation measure (a number that is
> 1 when the property fails, normalised by the rounding budget, or a bool). The property test
applies it to correct models; the counter-test applies the *same* function to a deliberately wrong
model and asserts that the violation is reported, so no checker can pass vacuously.

Shapes come from a small fixed set (JIT compiles once per shape); float32 draws use ``width=32``
and no subnormals; float64 variants (marked ``x64``) run in a process of their own with
``JAX_ENABLE_X64=1``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxfeat
from jaxfeat import bounds
from jaxfeat import theory as th

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
VOCABS = st.sampled_from([2, 3, 7, 64, 1000])
SMALL_VOCABS = st.sampled_from([2, 3, 7, 64])
A_GRID = jnp.arange(65, dtype=jnp.float32) / 8  # dyadic steps: exactly uniform in float32
PEAK = jax.jit(th.token_peak_activation)
BINARY = jax.jit(th.binary_feature)  # values are validated eagerly in test_theory.py
# float64 variants: run in a process of their own, `JAX_ENABLE_X64=1 python -m pytest -m x64 -n 0`.
x64 = pytest.mark.x64


def floats(lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return st.floats(lo, hi, width=32, allow_subnormal=False)


@st.composite
def vectors(draw, V, bound):
    """A (V,) float32 vector in [-bound, bound]: entry by entry for small V, else from a seed."""
    if V <= 7:
        return draw(hnp.arrays(np.float32, V, elements=floats(-bound, bound)))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).uniform(-bound, bound, V).astype(np.float32)


@st.composite
def feature_case(draw, vocabs=VOCABS):
    """One feature: (l, c, j, m) with V drawn from the fixed set."""
    V = draw(vocabs)
    lv = draw(vectors(V, 4.0))
    c = draw(vectors(V, 4.0))
    return lv, c, draw(st.integers(0, V - 1)), draw(st.integers(0, V - 1))


def token_pair(V):
    """Two different tokens, without rejection sampling."""
    return st.tuples(st.integers(0, V - 1), st.integers(0, V - 2)).map(
        lambda jm: (jm[0], jm[1] + (jm[1] >= jm[0]))
    )


def one_feature(lv, c):
    """A feature whose activation equals t for t >= 0."""
    return jaxfeat.Features.create(jnp.asarray(c), jnp.asarray(lv)[None], jnp.ones(1), jnp.zeros(1))


def logsumexp64(z):
    zmax = z.max(axis=-1, keepdims=True)
    return (zmax + np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True)))[..., 0]


def target_from(t, z):
    """Float32 target from float64 logits, normalised in float64 first."""
    z = np.asarray(z, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return jaxfeat.Target(np.asarray(t, np.float32), p.astype(np.float32), normalize=True)


# ---------------------------------------------------------------------------------------------
# 1. Log-ratios are affine (hence monotone) in the activation, with rate l_j - l_m.


def ratio_law_violation(a, z, lv, c, j, m):
    """> 1 when log(P_j/P_m) on the uniform grid a is not the line a (l_j - l_m) + c_j - c_m,
    has non-zero second differences, or moves against sign(l_j - l_m)."""
    a = np.asarray(a, np.float64)
    r = np.asarray(th.log_ratio(z, j, m), np.float64)
    l64, c64 = np.asarray(lv, np.float64), np.asarray(c, np.float64)
    scale = 64 * EPS32 * (1 + np.abs(c64).max() + np.abs(a).max() * np.abs(l64).max())
    rate = float(th.single_feature_ratio_rate(lv, j, m))
    second = np.abs(np.diff(r, 2)).max(initial=0.0)
    off_line = np.abs(r - (rate * a + c64[j] - c64[m])).max()
    against = np.max(-np.sign(rate) * np.diff(r), initial=0.0)
    return max(second, off_line, against) / scale


@given(feature_case())
def test_log_ratio_is_affine_in_activation(case):
    lv, c, j, m = case
    z = jaxfeat.logits(one_feature(lv, c), A_GRID)
    assert ratio_law_violation(A_GRID, z, lv, c, j, m) <= 1


def test_counter_ratio_law_detects_sin_activation():
    lv, c = np.array([0.0, 1.0, -2.0], np.float32), np.array([0.3, -0.2, 1.0], np.float32)
    z_bad = c + jnp.sin(A_GRID)[:, None] * lv
    assert ratio_law_violation(A_GRID, z_bad, lv, c, 1, 2) > 1


# ---------------------------------------------------------------------------------------------
# 2. A bias vector shifts every log-ratio by a constant: scale, never shape.


def bias_shift_violation(z, z_biased, scale):
    """> 1 when some log-ratio changes by a non-constant amount along the grid."""
    d = np.asarray(z_biased, np.float64) - np.asarray(z, np.float64)
    d = d - d[:, :1]  # every ratio's shift is a difference of these columns
    return np.max(d.max(axis=0) - d.min(axis=0)) / scale


@given(feature_case(), st.data())
def test_bias_changes_ratios_by_a_constant_factor(case, data):
    lv, c, _, _ = case
    beta = data.draw(vectors(len(lv), 4.0))
    p = one_feature(lv, c)
    z = jaxfeat.logits(p, A_GRID)
    zb = jaxfeat.logits(p._replace(c=p.c + beta), A_GRID)
    scale = 64 * EPS32 * (1 + np.abs(c).max() + np.abs(beta).max() + 8 * np.abs(lv).max())
    assert bias_shift_violation(z, zb, scale) <= 1


def test_counter_bias_inside_the_feature_changes_shape():
    lv, c = np.array([0.0, 1.0, -2.0], np.float32), np.zeros(3, np.float32)
    beta = np.array([0.5, -1.0, 0.0], np.float32)
    p = one_feature(lv, c)
    z_bad = jaxfeat.logits(p._replace(l=p.l + beta), A_GRID)  # "bias" scaled by the activation
    assert bias_shift_violation(jaxfeat.logits(p, A_GRID), z_bad, 64 * EPS32 * 20) > 1


# ---------------------------------------------------------------------------------------------
# 3. Binary features reproduce any full-support q exactly; ignoring c costs osc(c), osc(c)^2/8.


@st.composite
def distributions(draw, vocabs=VOCABS):
    V = draw(vocabs)
    temp = draw(floats(0.0, 6.0))
    z = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=V) * temp
    q = np.exp(z - z.max())
    return (q / q.sum()).astype(np.float32)


def reproduction_violation(q, lv, c, a_on):
    """> 1 when softmax(a_on l + c) differs from q by more than rounding (in log space)."""
    log_model = np.asarray(jax.nn.log_softmax(a_on * jnp.asarray(lv) + jnp.asarray(c)), np.float64)
    log_q = np.log(np.asarray(q, np.float64))
    scale = 64 * EPS32 * (1 + np.abs(log_q).max() + np.abs(np.asarray(c, np.float64)).max())
    return np.abs(log_model - log_q).max() / scale


@given(distributions(), st.data(), floats(0.125, 8.0))
def test_binary_feature_reproduces_q(q, data, a_on):
    c = data.draw(vectors(len(q), 4.0))
    assert reproduction_violation(q, BINARY(q, c, a_on), c, a_on) <= 1
    assert reproduction_violation(q, BINARY(q, None, 1.0), np.zeros_like(q), 1.0) <= 1


def test_counter_binary_feature_ignoring_c_is_caught():
    q = np.array([0.6, 0.3, 0.1], np.float32)
    c = np.array([0.0, 1.0, -0.5], np.float32)
    wrong = jnp.log(q)  # built for c = 0, used with c
    assert reproduction_violation(q, wrong, c, 1.0) > 1


def kl_bound_violation(q, c, bound_fn):
    """> 1 when the ignored-c construction breaks the bounds claimed by bound_fn(c): the log-ratio
    error must equal the first bound (it is attained) and both KLs stay below the second."""
    q64, c64 = np.asarray(q, np.float64), np.asarray(c, np.float64)
    log_q = np.log(q64)
    log_r = log_q + c64 - logsumexp64(log_q + c64)
    r = np.exp(log_r)
    kl_qr, kl_rq = np.sum(q64 * (log_q - log_r)), np.sum(r * (log_r - log_q))
    err = np.max(log_r - log_q) - np.min(log_r - log_q)
    b_ratio, b_kl = (float(x) for x in bound_fn(c))
    return max(
        abs(err - b_ratio) / (1e-6 * (1 + b_ratio)),
        (max(kl_qr, kl_rq) - b_kl) / (1e-6 * (1 + b_kl)) if b_kl > 0 else 0.0,
    )


@given(distributions(), st.data())
def test_ignored_bias_bounds_hold(q, data):
    c = data.draw(vectors(len(q), data.draw(floats(0.0, 4.0))))
    assert kl_bound_violation(q, c, th.ignored_bias_bounds) <= 1


def test_counter_kl_bound_too_small_is_caught():
    q, c = np.array([0.5, 0.5], np.float32), np.array([0.0, 0.5], np.float32)  # Hoeffding-tight
    too_small = lambda c: (np.ptp(c), np.ptp(c) ** 2 / 32)
    assert kl_bound_violation(q, c, too_small) > 1


@x64
def test_binary_feature_float64_exact():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(7)) * 0.999 + 0.001 / 7
    c = rng.normal(size=7)
    lv = th.binary_feature(jnp.asarray(q / q.sum()), jnp.asarray(c), 2.0)
    assert lv.dtype == jnp.float64
    np.testing.assert_allclose(jax.nn.softmax(2.0 * lv + c), q / q.sum(), rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# 4. Each token is unimodal (log-concave) in a; max-l tokens rise; the peak is where E[l] = l_j.


def unimodality_violation(logp, scale):
    """> 1 when log P_j on a uniform grid has a positive second difference beyond rounding (not
    concave), or more than one turning point beyond rounding (not unimodal)."""
    logp = np.asarray(logp, np.float64)
    if th.turning_points(logp, threshold=scale) > 1:
        return np.inf
    return np.max(np.diff(logp, 2), initial=0.0) / scale


def status_violation(logp, status, scale):
    """> 1 when a 'rising' token ever falls or a 'falling' token ever rises."""
    d = np.diff(np.asarray(logp, np.float64))
    if status == "rising":
        return np.max(-d, initial=0.0) / scale
    if status == "falling":
        return np.max(d, initial=0.0) / scale
    return 0.0


def peak_violation(lv, c, j, a_star, a_grid):
    """> 1 when some grid point beats a_star's log P_j (float64) beyond the resolution of a_star."""
    l64, c64 = np.asarray(lv, np.float64), np.asarray(c, np.float64)

    def logp(a):
        z = np.outer(a, l64) + c64
        return z[:, j] - logsumexp64(z)

    grid = np.asarray(a_grid, np.float64)
    tol = 1e-9 * (1 + np.abs(c64).max() + grid.max() * np.abs(l64).max())
    tol += np.ptp(l64) ** 2 * (8 * EPS32 * (1 + a_star)) ** 2 / 8
    return (logp(grid).max() - logp(np.array([a_star]))[0]) / tol


@given(feature_case())
def test_token_probability_is_unimodal_and_peaks_at_root(case):
    lv, c, j, _ = case
    for token in (j, int(np.argmax(lv))):
        res = PEAK(lv, c, token)
        a_star, status = float(res.a), th.PEAK_STATUS[int(res.status)]
        note(f"token={token} a*={a_star} status={status}")
        a_max = 2 * a_star + 2 if status == "peaked" else 8.0
        grid = jnp.linspace(0.0, a_max, 129, dtype=jnp.float32)
        logp = jaxfeat.log_probs(one_feature(lv, c), grid)[:, token]
        scale = 64 * EPS32 * (1 + np.abs(c).max() + a_max * np.abs(lv).max() + np.log(len(lv)))
        assert unimodality_violation(logp, scale) <= 1
        assert status_violation(logp, status, scale) <= 1
        if token == int(np.argmax(lv)) or lv[token] == lv.max():
            assert status == "rising"
        if status != "rising":
            assert peak_violation(lv, c, token, a_star, grid) <= 1


def test_counter_unimodality_broken_softmax_and_wrong_peak():
    lv, c = np.array([-1.0, 0.0, 1.0], np.float32), np.array([0.0, 1.0, -1.0], np.float32)
    grid = jnp.linspace(0.0, 4.0, 65)
    z = jaxfeat.logits(one_feature(lv, c), grid)
    broken = z[:, 1] + jax.nn.logsumexp(z, axis=1)  # normaliser with the wrong sign
    assert unimodality_violation(broken, 64 * EPS32 * 10) > 1
    a_star = float(th.token_peak_activation(lv, c, 1).a)
    assert peak_violation(lv, c, 1, a_star, grid) <= 1
    assert peak_violation(lv, c, 1, a_star + 1.0, grid) > 1
    logp = jaxfeat.log_probs(one_feature(lv, c), grid)[:, 1]
    assert status_violation(logp, "rising", 64 * EPS32 * 10) > 1  # token 1 peaks, not rises


@x64
def test_token_peak_float64_root():
    lv, c = jnp.array([-1.0, 0.0, 2.0, 0.5]), jnp.array([0.3, 2.0, -1.0, 0.0])
    res = th.token_peak_activation(lv, c, 1)
    p = jax.nn.softmax(res.a * lv + c)
    assert res.a.dtype == jnp.float64
    assert abs(float(jnp.sum(p * lv)) - 0.0) < 1e-12


# ---------------------------------------------------------------------------------------------
# 5. Features sharing one activation profile are one feature.


def collapse_violation(z_many, z_one, scale):
    """> 1 when k features and their collapsed single feature give different logits."""
    return np.abs(np.asarray(z_many, np.float64) - np.asarray(z_one, np.float64)).max() / scale


@given(
    SMALL_VOCABS,
    st.integers(0, 2**32 - 1),
    floats(-2.0, 2.0),
    floats(-1.0, 1.0),
    hnp.arrays(np.float32, 3, elements=floats(0.125, 4.0)),
)
def test_shared_activation_collapses(V, seed, w0, b0, s):
    rng = np.random.default_rng(seed)
    lv = rng.normal(size=(3, V)).astype(np.float32)
    c = rng.normal(size=V).astype(np.float32)
    t = jnp.linspace(-1.0, 1.0, 65)
    scale = 64 * EPS32 * (1 + np.abs(c).max() + 3 * 4 * 3 * np.abs(lv).max() * (1 + abs(w0)))
    # ReLU is positively homogeneous: a_i = relu(s_i x) = s_i relu(x)
    many = jaxfeat.Features.create(c, lv, s * w0, s * b0)
    one = jaxfeat.Features.create(c, (s @ lv)[None], [w0], [b0])
    assert collapse_violation(jaxfeat.logits(many, t), jaxfeat.logits(one, t), scale) <= 1
    # any encoder: identical profiles add their logit vectors
    theta = np.full(3, 0.25 * b0, np.float32)
    same = jaxfeat.Features.create(c, lv, np.full(3, w0), np.full(3, b0), theta)
    summed = jaxfeat.Features.create(c, lv.sum(0)[None], [w0], [b0], theta[:1])
    for act in ("jumprelu", "softplus"):
        z_many, z_one = jaxfeat.logits(same, t, act), jaxfeat.logits(summed, t, act)
        assert collapse_violation(z_many, z_one, scale) <= 1


def test_counter_different_thresholds_do_not_collapse():
    lv = np.array([[1.0, 0.0], [-2.0, 0.0]], np.float32)
    many = jaxfeat.Features.create(np.zeros(2), lv, np.ones(2), np.array([0.0, -0.5]))  # shifted
    one = jaxfeat.Features.create(np.zeros(2), lv.sum(0)[None], [1.0], [0.0])
    t = jnp.linspace(-1.0, 1.0, 65)
    assert collapse_violation(jaxfeat.logits(many, t), jaxfeat.logits(one, t), 64 * EPS32) > 1


# ---------------------------------------------------------------------------------------------
# 6. k ReLU features: every log-ratio has at most maxTP(k) turning points (k, or k - 1 for
#    k <= 2), and explicit constructions reach it.

T_FINE = jnp.linspace(-1.0, 1.0, 257)
K_SLOTS = 6  # features are padded to a fixed number of slots (zero logit vectors): one compile


def padded(params, slots=K_SLOTS):
    k, V = params.l.shape
    pad = slots - k
    return jaxfeat.Features.create(
        params.c,
        jnp.concatenate([params.l, jnp.zeros((pad, V), params.l.dtype)]),
        jnp.concatenate([params.w, jnp.ones(pad)]),
        jnp.concatenate([params.b, jnp.zeros(pad)]),
    )


def turning_excess(z, k, tol):
    """Largest number of turning points over the token pairs checked, minus maxTP(k)."""
    z = np.asarray(z, np.float64)
    V = z.shape[1]
    if V <= 64:
        jj, mm = np.triu_indices(V, 1)
    else:
        jj = np.concatenate([np.arange(1, V), np.arange(2, V)])
        mm = np.concatenate([np.zeros(V - 1, int), np.ones(V - 2, int)])
    return int(
        np.max(th.turning_points(z[:, jj] - z[:, mm], threshold=tol))
    ) - th.max_turning_points(k)


def random_relu(rng, k, V, knot_range=1.2):
    lv = rng.normal(size=(k, V)) * 2
    c = rng.normal(size=V)
    w = rng.normal(size=k)
    b = -w * rng.uniform(-knot_range, knot_range, size=k)
    return lv, c, w, b


@given(VOCABS, st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_turning_points_at_most_max(V, k, seed):
    lv, c, w, b = random_relu(np.random.default_rng(seed), k, V)
    z = jaxfeat.logits(padded(jaxfeat.Features.create(c, lv, w, b)), T_FINE)
    tol = 64 * EPS32 * (1 + float(jnp.abs(z).max()))
    assert turning_excess(z, k, tol) <= 0


@given(
    st.integers(1, 6),
    SMALL_VOCABS,
    st.data(),
    floats(0.5, 4.0),
    hnp.arrays(np.float32, 7, elements=floats(1.0, 4.0)),
)
def test_zigzag_reaches_max_turning_points(k, V, data, slope, gaps):
    j, m = data.draw(token_pair(V))
    knots = np.cumsum(gaps[: k + 1])[:k] / np.sum(gaps[: k + 1])  # in (0, 1), gaps >= 1/28
    p = th.zigzag_features(k, V, j, m, knots=knots, slope=slope)
    c = data.draw(vectors(V, 4.0))
    t = jnp.linspace(0.0, 1.0, 257)
    r = th.log_ratio(padded(p._replace(c=jnp.asarray(c))), j, m, t=t)
    tol = 64 * EPS32 * (1 + float(jnp.abs(r).max()) + 8 * slope)
    assert th.turning_points(r, threshold=tol) == th.max_turning_points(k)


def test_counter_extra_kinks_exceed_the_bound():
    lv, c, w, b = random_relu(np.random.default_rng(0), 2, 3)
    z = jaxfeat.logits(padded(jaxfeat.Features.create(c, lv, w, b)), T_FINE)
    tri = jnp.abs(((T_FINE + 1) * 2) % 2 - 1)  # triangle wave: a PL model with 8 extra kinks
    z_bad = z.at[:, 1].add(20 * tri)
    assert turning_excess(z_bad, 2, 64 * EPS32 * 40) > 0


# ---------------------------------------------------------------------------------------------
# 7. Two features with different thresholds make a ratio rise then fall; one feature cannot.


def rise_fall_violation(r, tol):
    """> 0 unless r rises by more than 2 tol and afterwards falls by more than 2 tol."""
    r = np.asarray(r, np.float64)
    rise = r - np.minimum.accumulate(r)
    fall = r - np.minimum.accumulate(r[::-1])[::-1]
    return 2 * tol - np.max(np.minimum(rise, fall))


def verdict_violation(target, tol, encoder, expect):
    """True when single_feature_check contradicts how the target was made: ``expect=True`` needs a
    witness within tol, ``expect=False`` a certificate."""
    res = th.single_feature_check(target, tol, encoder, use_fit=False)
    if expect:
        return not (res.representable is True and res.error <= tol and res.witness is not None)
    return not (res.representable is False and res.certificate is not None)


T_CHECK = np.linspace(0.0, 1.0, 64)


@given(VOCABS, st.data(), floats(0.05, 0.4), floats(0.1, 0.5), floats(0.5, 3.0))
def test_rise_then_fall_is_not_one_feature(V, data, t1, width, height):
    # The fall after the second knot must fit on the grid: with it at 0.9 or later (t1 = 0.4,
    # width = 0.5, height = 0.5) the ratio falls 0.095 by t = 1, under the 2 tol a certificate
    # needs. Slopes are at least height / width >= 1, so a knot by 0.75 leaves a fall >= 0.25.
    assume(t1 + width <= 0.75)
    j, m = data.draw(token_pair(V))
    p = th.rise_then_fall(V, j, m, knots=(t1, t1 + width), height=height)
    z = jaxfeat.logits(p, jnp.asarray(T_CHECK, jnp.float32))
    tol = 0.05
    assert rise_fall_violation(th.log_ratio(z, j, m), tol) < 0
    target = target_from(T_CHECK, z)
    assert not verdict_violation(target, tol, "monotone", expect=False)
    assert not verdict_violation(target, tol, "relu", expect=False)


@given(VOCABS, st.integers(0, 2**32 - 1), floats(0.25, 3.0))
def test_one_feature_targets_are_accepted(V, seed, power):
    rng = np.random.default_rng(seed)
    t = np.linspace(-1.0, 1.0, 64)
    lv, c, w, b = random_relu(rng, 1, V, knot_range=1.5)
    z = c + np.maximum(np.outer(t, w) + b, 0.0) @ lv
    # The sup-norm check clips log-probabilities LOG_DEPTH (30) nats below each row's maximum,
    # and float32 keeps no digits that deep: a path that dives further is not affine as stored.
    assume(np.ptp(z, axis=1).max() < 25.0)
    assert not verdict_violation(target_from(t, z), 1e-3, "relu", expect=True)
    a = np.cumsum(rng.exponential(size=len(t))) ** power  # any monotone activation
    z = c + np.outer(a / a.max(), lv[0])
    assert not verdict_violation(target_from(t, z), 1e-3, "monotone", expect=True)


def test_counter_single_feature_verdicts():
    t = T_CHECK
    lv, c = np.array([0.0, 2.0, -1.0]), np.array([0.5, 0.0, 0.0])
    # a "single feature" with a broken, non-monotone encoder is caught ...
    z_bad = c + np.outer(1 + np.sin(6 * t), lv)
    assert verdict_violation(target_from(t, z_bad), 0.01, "monotone", expect=True)
    assert rise_fall_violation(z_bad[:, 1] - z_bad[:, 0], 0.01) < 0
    # ... and a genuine one-feature target is not rejected, nor does its ratio rise then fall
    z_ok = c + np.outer(np.maximum(t - 0.3, 0), lv)
    assert verdict_violation(target_from(t, z_ok), 0.01, "relu", expect=False)
    assert rise_fall_violation(z_ok[:, 1] - z_ok[:, 0], 0.01) > 0


# ---------------------------------------------------------------------------------------------
# 8. Soundness: a k-feature model within delta of a target bounds every certificate by k.

T_SOUND = np.linspace(-1.0, 1.0, 96)
REPS = 6


def bound_excess(bound, target, delta, k):
    """How far a certified lower bound exceeds the true k of a model within delta (> 0 is a
    violation: the bound is unsound)."""
    return bound(target, delta).lower_bound - k


SPAN_CAP = 60.0  # nats


def noisy_models(seed, V, k, delta, signs):
    """REPS random k-feature ReLU models, then one zigzag model whose pieces move by only a few
    delta (where the bounds are tight), each plus logit noise of at most 0.45 delta per token, so
    every log-ratio moves by at most 0.9 delta. Yields (target, exact logits)."""
    rng = np.random.default_rng(seed)
    for rep in range(REPS + 1):
        if rep < REPS:
            lv, c, w, b = random_relu(rng, k, V)
        else:
            gaps = rng.uniform(1.0, 3.0, k + 1)
            knots = -1 + 2 * np.cumsum(gaps)[:k] / gaps.sum()  # in (-1, 1), gaps >= 2 / (3k + 3)
            slope = rng.uniform(0.5, 8.0) * delta * (3 * k + 3) / 2  # pieces move by a few delta
            j, m = rng.choice(V, 2, replace=False)
            p = th.zigzag_features(k, V, int(j), int(m), knots=knots, slope=slope)
            lv, w, b = (np.asarray(x, np.float64) for x in (p.l, p.w, p.b))
            c = rng.normal(size=V)
        z = c + np.maximum(np.outer(T_SOUND, w) + b, 0.0) @ lv
        # Scaling c and l keeps a k-feature model; a float32 target cannot hold the
        # probabilities of a logit span much over 80 nats (they underflow to 0).
        z *= min(1.0, SPAN_CAP / np.ptp(z, axis=1).max())
        u = rng.choice([-1.0, 1.0], z.shape) if signs else rng.uniform(-1, 1, z.shape)
        yield target_from(T_SOUND, z + 0.45 * delta * u), z


@given(VOCABS, st.integers(1, 4), st.integers(0, 2**32 - 1), floats(-3.0, -0.5), st.booleans())
def test_lower_bounds_are_sound(V, k, seed, log_delta, signs):
    delta = 10.0 ** float(log_delta)
    for target, z in noisy_models(seed, V, k, delta, signs):
        assert th.sup_log_ratio_error(target, z) < delta  # the model is within delta
        assert bound_excess(bounds.turning_point_lower_bound, target, delta, k) <= 0
        assert bound_excess(bounds.piece_count_lower_bound, target, delta, k) <= 0
        if k == 1:  # a single feature within delta exists: never certified impossible
            assert th.single_feature_check(target, delta, use_fit=False).representable is not False


def test_counter_bounds_with_shrunk_delta_are_caught():
    delta = 0.01
    target, _ = next(noisy_models(0, 3, 1, delta, signs=True))
    for bound in (bounds.turning_point_lower_bound, bounds.piece_count_lower_bound):
        assert bound_excess(bound, target, delta, 1) <= 0
        assert bound_excess(bound, target, delta / 50, 1) > 0

    # a bound that forgets the "- 1" (n alternating moves certify only n - 1 turning points)
    def off_by_one(tg, d):
        res = bounds.turning_point_lower_bound(tg, d)
        return dataclasses.replace(res, lower_bound=res.moves)

    assert bound_excess(bounds.turning_point_lower_bound, _zigzag_target(4), delta, 4) <= 0
    assert bound_excess(off_by_one, _zigzag_target(4), delta, 4) > 0


def _zigzag_target(k):
    t = np.linspace(0.0, 1.0, 129)
    z = jaxfeat.logits(th.zigzag_features(k, vocab=3), jnp.asarray(t, jnp.float32))
    return target_from(t, z)
