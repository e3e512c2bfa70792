"""The target library (jaxfeat.targets) and the Target container and its constructors.

Expected values are derived from the documented formulas (softmax of known logits, count ratios),
never copied from a run of the code.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxfeat
from jaxfeat import Features, Target, targets

from .helpers import x64

# Tolerances for float32 targets: log-probabilities of rows whose logits span < 15 nats.
LOG_ATOL = 2e-5


def _assert_rows_on_simplex(tgt, atol=1e-6):
    p = np.asarray(tgt.probs, np.float64)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=atol)


def _log_ratio(tgt, i, j):
    """``log(p_i / p_j)`` on the grid, in float64."""
    p = np.asarray(tgt.probs, np.float64)
    return np.log(p[:, i]) - np.log(p[:, j])


def _centred_logits(tgt):
    """Logits up to a per-row constant: ``log p`` minus its mean over the vocabulary."""
    lp = np.log(np.asarray(tgt.probs, np.float64))
    return lp - lp.mean(1, keepdims=True)


def _softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# The library: shapes, simplex rows, float type.

LIBRARY = [
    ("html_closing_tag", lambda: targets.html_closing_tag(), (2, 8)),
    ("temperature", lambda: targets.temperature(n=41), (41, 3)),
    ("temperature_nonmonotone", lambda: targets.temperature(nonmonotone=True, n=7), (7, 3)),
    ("oscillating", lambda: targets.oscillating(2.5, n=33, vocab=6), (33, 6)),
    ("tuning_curves", lambda: targets.tuning_curves(4, 0.2, n=20), (20, 4)),
    ("random_smooth", lambda: targets.random_smooth(1, bandwidth=2, vocab=4, n=30), (30, 4)),
]


@pytest.mark.parametrize(("name", "make", "shape"), LIBRARY, ids=[c[0] for c in LIBRARY])
def test_library_shapes_grids_and_simplex_rows(name, make, shape):
    tgt = make()
    assert isinstance(tgt, Target)
    assert tgt.probs.shape == shape
    assert (tgt.num_points, tgt.vocab) == shape
    assert tgt.t.shape == (shape[0],)
    assert tgt.probs.dtype == tgt.t.dtype == jnp.result_type(float)
    assert np.all(np.diff(np.asarray(tgt.t)) > 0)
    _assert_rows_on_simplex(tgt)


# --------------------------------------------------------------------------------------------
# html_closing_tag


@pytest.mark.parametrize("p_on", [(0.6, 0.25, 0.12), (0.1, 0.2, 0.3)])
def test_html_closing_tag_rows(p_on):
    tgt = targets.html_closing_tag(p_on)
    assert tgt.tokens == targets.HTML_TOKENS == ("\n", "\n\n", "<", " ", "the", ".", ",", "and")
    np.testing.assert_array_equal(tgt.t, [0.0, 1.0])
    off, on = np.asarray(tgt.probs, np.float64)
    assert np.all(off > 0) and np.all(on > 0)
    # On: the three tag-following tokens have exactly p_on, the other five share the rest in
    # the ratios they have when the feature is off.
    np.testing.assert_allclose(on[:3], p_on, rtol=1e-6)
    np.testing.assert_allclose(on[3:].sum(), 1 - sum(p_on), rtol=1e-5)
    np.testing.assert_allclose(on[3:] / on[3:].sum(), off[3:] / off[3:].sum(), rtol=1e-5)
    # Off: ordinary text tokens carry most of the mass.
    assert off[3:].sum() > 0.5


def test_html_closing_tag_default_puts_almost_all_mass_on_the_tag_tokens():
    off, on = np.asarray(targets.html_closing_tag().probs)
    assert on[:3].sum() > 0.9 > off[:3].sum()


def test_html_closing_tag_is_one_feature_exactly():
    # With every probability positive, c = log p(0) and l = log p(1) - log p(0) with a ReLU
    # encoder a(t) = t reproduce both rows.
    tgt = targets.html_closing_tag()
    lp = jnp.log(tgt.probs)
    prm = Features.create(c=lp[0], l=(lp[1] - lp[0])[None], w=jnp.ones(1), b=jnp.zeros(1))
    np.testing.assert_allclose(jaxfeat.probs(prm, tgt.t), tgt.probs, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# temperature


def test_temperature_monotone_is_the_documented_logit_ray():
    tgt = targets.temperature(n=101)
    assert tgt.tokens == ("cold", "mild", "hot")
    t = np.linspace(-10.0, 40.0, 101)
    np.testing.assert_allclose(tgt.t, t, rtol=1e-6, atol=1e-5)
    # The logits (-1, 0, 1) (t - 15) / 5 have row mean 0, so they equal the centred logits.
    z = np.outer((t - 15) / 5, [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(_centred_logits(tgt), z, atol=LOG_ATOL)
    # Every log-ratio is monotone in t; cold falls, hot rises, mild peaks once at 15 C.
    for i in range(3):
        for j in range(i + 1, 3):
            d = np.diff(_log_ratio(tgt, j, i))
            assert np.all(d > 0), (i, j)
    p = np.asarray(tgt.probs)
    assert np.all(np.diff(p[:, 0]) < 0) and np.all(np.diff(p[:, 2]) > 0)
    assert t[np.argmax(p[:, 1])] == 15.0
    d_mild = np.diff(p[:, 1])
    assert np.all(d_mild[t[:-1] < 15] > 0) and np.all(d_mild[t[:-1] >= 15] < 0)


def test_temperature_monotone_is_one_feature_active_on_the_whole_range():
    # a(t) = relu(t + 10) = t + 10 on [-10, 40]; z = (t - 15)/5 d = a d/5 - 5 d with d = (-1, 0, 1).
    tgt = targets.temperature()
    d = jnp.array([-1.0, 0.0, 1.0])
    prm = Features.create(c=-5 * d, l=(d / 5)[None], w=jnp.ones(1), b=jnp.full(1, 10.0))
    np.testing.assert_allclose(jaxfeat.probs(prm, tgt.t), tgt.probs, rtol=1e-5, atol=1e-7)


def test_temperature_nonmonotone_mild_to_cold_rises_then_falls():
    tgt = targets.temperature(nonmonotone=True, n=101)
    t = np.linspace(-10.0, 40.0, 101)
    mild_cold = _log_ratio(tgt, 1, 0)
    # The documented logits: cold -(t - 10)/4, mild 2 - ((t - 18)/6)^2, hot (t - 26)/4.
    np.testing.assert_allclose(mild_cold, 2 - ((t - 18) / 6) ** 2 + (t - 10) / 4, atol=LOG_ATOL)
    np.testing.assert_allclose(_log_ratio(tgt, 2, 0), (t - 18) / 2, atol=LOG_ATOL)
    # d/dt [-(t - 18)^2 / 36 + t / 4] = 0 at t = 22.5: rising before, falling after.
    assert t[np.argmax(mild_cold)] == 22.5
    d = np.diff(mild_cold)
    assert np.all(d[t[1:] <= 22.5] > 0) and np.all(d[t[:-1] >= 22.5] < 0)
    # Hot against cold stays monotone: the non-monotonicity is mild's alone.
    assert np.all(np.diff(_log_ratio(tgt, 2, 0)) > 0)


def test_the_two_temperature_variants_differ():
    a, b = targets.temperature(n=11), targets.temperature(nonmonotone=True, n=11)
    np.testing.assert_array_equal(a.t, b.t)
    assert not np.allclose(a.probs, b.probs, atol=1e-3)


# --------------------------------------------------------------------------------------------
# oscillating


@pytest.mark.parametrize(("m", "vocab"), [(1, 3), (2.5, 3), (3, 5)])
def test_oscillating_logits_are_the_documented_ones(m, vocab):
    n = 64
    tgt = targets.oscillating(m, n=n, vocab=vocab)
    t = np.linspace(0.0, 1.0, n)
    ph = 2 * np.pi * m * t
    z = [np.zeros(n), 3 * np.sin(ph), 2 * np.cos(ph)]
    z += [2 * np.sin(ph + 2 * np.pi * j / vocab) for j in range(3, vocab)]
    z = np.stack(z, axis=1)
    # Token 0 has logit 0, so log(p_j / p_0) is token j's logit.
    for j in range(vocab):
        np.testing.assert_allclose(_log_ratio(tgt, j, 0), z[:, j], atol=LOG_ATOL)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_oscillating_m_has_m_oscillations(m):
    tgt = targets.oscillating(m, n=256)
    s = _log_ratio(tgt, 1, 0)  # 3 sin(2 pi m t): m maxima, m minima, 2m - 1 interior zeros
    slope = np.sign(np.diff(s))
    assert np.sum((slope[:-1] > 0) & (slope[1:] < 0)) == m
    assert np.sum((slope[:-1] < 0) & (slope[1:] > 0)) == m
    np.testing.assert_allclose(s.max(), 3.0, atol=1e-2)
    np.testing.assert_allclose(s.min(), -3.0, atol=1e-2)


# --------------------------------------------------------------------------------------------
# tuning_curves


@pytest.mark.parametrize(("n_tokens", "width", "height"), [(5, 0.1, 4.0), (3, 0.3, 1.5)])
def test_tuning_curves_are_gaussian_bumps_read_off_by_the_nearest_centre(n_tokens, width, height):
    n = 256
    tgt = targets.tuning_curves(n_tokens, width, n=n, height=height)
    t = np.linspace(0.0, 1.0, n)
    mu = np.linspace(0.0, 1.0, n_tokens)
    z = height * np.exp(-((t[:, None] - mu) ** 2) / (2 * width**2))
    np.testing.assert_allclose(_centred_logits(tgt), z - z.mean(1, keepdims=True), atol=LOG_ATOL)
    # Bumps peak at their own centres, so the most likely token is the one with the nearest
    # centre (no grid point i / 255 is a midpoint (2j + 1) / (2 (n_tokens - 1)) here).
    nearest = np.argmin(np.abs(t[:, None] - mu), axis=1)
    np.testing.assert_array_equal(np.argmax(np.asarray(tgt.probs), axis=1), nearest)


def test_tuning_curves_peak_on_their_centres():
    tgt = targets.tuning_curves(5, 0.1, n=257)  # centres 0, 1/4, ... on grid points 0, 64, ...
    p = np.asarray(tgt.probs)
    for j, i in enumerate(range(0, 257, 64)):
        assert np.argmax(p[i]) == j
        assert np.isclose(float(tgt.t[i]), j / 4)


# --------------------------------------------------------------------------------------------
# random_smooth


def test_random_smooth_is_reproducible_from_its_key_and_differs_across_keys():
    a = targets.random_smooth(3, bandwidth=2, vocab=4, n=64)
    np.testing.assert_array_equal(a.probs, targets.random_smooth(3, 2, 4, n=64).probs)
    np.testing.assert_array_equal(
        a.probs, targets.random_smooth(jax.random.key(3), 2, 4, n=64).probs
    )
    np.testing.assert_array_equal(a.probs, targets.random_smooth(np.int64(3), 2, 4, n=64).probs)
    b = targets.random_smooth(4, bandwidth=2, vocab=4, n=64)
    assert not np.allclose(a.probs, b.probs, atol=1e-3)


@pytest.mark.parametrize("bandwidth", [2, 5])
def test_random_smooth_logits_are_periodic_and_band_limited(bandwidth):
    n = 129
    tgt = targets.random_smooth(0, bandwidth=bandwidth, vocab=4, n=n)
    # A Fourier series with frequencies 1..B on t in [0, 1]: the first and last rows agree, and
    # on the n - 1 points of one period the logits (centred per row, which keeps the frequencies)
    # have no DFT power at frequency 0 or above B.
    np.testing.assert_allclose(tgt.probs[0], tgt.probs[-1], atol=1e-6)
    spectrum = np.abs(np.fft.rfft(_centred_logits(tgt)[:-1], axis=0))
    top = spectrum.max()
    assert np.all(spectrum[0] < 1e-4 * top)
    assert np.all(spectrum[bandwidth + 1 :] < 1e-4 * top)
    assert np.all(spectrum[bandwidth] > 1e-3 * top)  # the highest frequency is there


def test_random_smooth_logits_scale_linearly_with_scale():
    one = targets.random_smooth(5, bandwidth=2, vocab=4, n=50, scale=1.0)
    three = targets.random_smooth(5, bandwidth=2, vocab=4, n=50, scale=3.0)
    np.testing.assert_allclose(_centred_logits(three), 3 * _centred_logits(one), atol=1e-4)
    flat = targets.random_smooth(5, bandwidth=2, vocab=4, n=50, scale=0.0)
    np.testing.assert_allclose(flat.probs, 1 / 4, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad arguments: a ValueError that names the argument.

BAD_LIBRARY_ARGS = [
    (targets.html_closing_tag, dict(p_on=(0.5, 0.5, 0.1)), "p_on"),
    (targets.html_closing_tag, dict(p_on=(0.5, 0.2)), "p_on"),
    (targets.html_closing_tag, dict(p_on=(0.5, -0.1, 0.1)), "p_on"),
    (targets.html_closing_tag, dict(p_on=(np.nan, 0.1, 0.1)), "p_on"),
    (targets.html_closing_tag, dict(p_on="abc"), "p_on"),
    (targets.temperature, dict(n=1), "n=1 must be at least 2"),
    (targets.temperature, dict(n=0), "n=0 must be at least 2"),
    (targets.temperature, dict(n=10.5), "n=10.5 must be a positive integer"),
    (targets.oscillating, dict(m=0), "m=0"),
    (targets.oscillating, dict(m=-1.0), "m=-1.0"),
    (targets.oscillating, dict(m=np.nan), "m=nan"),
    (targets.oscillating, dict(m=1, n=1), "n=1 must be at least 2"),
    (targets.oscillating, dict(m=1, vocab=2), "vocab=2 must be at least 3"),
    (targets.oscillating, dict(m=1, vocab=0), "vocab=0 must be at least 3"),
    (targets.tuning_curves, dict(n_tokens=1, width=0.1), "n_tokens=1 must be at least 2"),
    (targets.tuning_curves, dict(n_tokens=3, width=0.0), "width=0.0"),
    (targets.tuning_curves, dict(n_tokens=3, width=-0.1), "width=-0.1"),
    (targets.tuning_curves, dict(n_tokens=3, width=0.1, n=1), "n=1 must be at least 2"),
    (targets.tuning_curves, dict(n_tokens=3, width=0.1, height=np.nan), "height=nan"),
    (targets.tuning_curves, dict(n_tokens=3, width=0.1, height=0.0), "height=0.0"),
    (targets.random_smooth, dict(key=0, bandwidth=0, vocab=3), "bandwidth=0"),
    (targets.random_smooth, dict(key=0, bandwidth=1, vocab=1), "vocab=1 must be at least 2"),
    (targets.random_smooth, dict(key=0, bandwidth=1, vocab=3, n=1), "n=1 must be at least 2"),
    (targets.random_smooth, dict(key=0, bandwidth=1, vocab=3, scale=-1.0), "scale=-1.0"),
    (targets.random_smooth, dict(key=0, bandwidth=1, vocab=3, scale=np.inf), "scale=inf"),
    (targets.random_smooth, dict(key=1.5, bandwidth=1, vocab=3), "key must be an integer seed"),
    (targets.random_smooth, dict(key=True, bandwidth=1, vocab=3), "key must be an integer seed"),
    (targets.random_smooth, dict(key=2**64, bandwidth=1, vocab=3), "key=.*out of range"),
]


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    BAD_LIBRARY_ARGS,
    ids=[f"{c[0].__name__}-{c[1]}" for c in BAD_LIBRARY_ARGS],
)
def test_library_rejects_bad_arguments(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


def test_random_smooth_rejects_a_batch_of_keys_and_accepts_a_legacy_key():
    with pytest.raises(ValueError, match=r"key must be .*shape \(2,\)"):
        targets.random_smooth(jax.random.split(jax.random.key(0), 2), 1, 3)
    legacy = targets.random_smooth(jax.random.PRNGKey(0), 2, 4, n=8)
    _assert_rows_on_simplex(legacy)


# --------------------------------------------------------------------------------------------
# Target


def test_target_stores_the_grid_rows_and_token_names():
    t = np.array([0.0, 0.5, 2.0])
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    tgt = Target(t, p, tokens=["a", "b", 3])
    np.testing.assert_array_equal(tgt.t, t)
    np.testing.assert_allclose(tgt.probs, p)
    assert tgt.tokens == ("a", "b", "3")
    assert (tgt.num_points, tgt.vocab) == (3, 3)
    assert repr(tgt) == "Target(T=3, V=3, tokens=('a', 'b', '3'))"
    assert Target(t, p).tokens is None


def test_normalize_renormalises_rows_and_otherwise_they_must_sum_to_one():
    p = np.array([[1.0, 3.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="sum to 1.*normalize=True"):
        Target([0.0, 1.0], p)
    np.testing.assert_allclose(
        Target([0.0, 1.0], p, normalize=True).probs, [[0.25, 0.75], [0.5, 0.5]]
    )


def test_log_probs_floors_zeros():
    tgt = Target([0.0, 1.0], [[0.0, 1.0], [0.25, 0.75]])
    lp = np.asarray(tgt.log_probs(floor=1e-20))
    np.testing.assert_allclose(lp[0], [np.log(1e-20), 0.0], rtol=1e-6)
    np.testing.assert_allclose(lp[1], np.log([0.25, 0.75]), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(tgt.log_probs())))


def test_target_rejects_bad_inputs_naming_them():
    with pytest.raises(ValueError, match=r"probs has shape \(2,\) but t has 2 points"):
        Target([0.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="t is not increasing"):
        Target([1.0, 0.0], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="tokens has 3 names but probs has V = 2"):
        Target([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], tokens="abc")


# Pytree


def test_target_is_a_pytree_through_tree_map_jit_and_vmap():
    tgt = targets.temperature(n=9)
    leaves, treedef = jax.tree.flatten(tgt)
    assert len(leaves) == 2 and leaves[0] is tgt.t and leaves[1] is tgt.probs
    back = jax.tree.unflatten(treedef, leaves)
    assert isinstance(back, Target) and back.tokens == tgt.tokens

    doubled = jax.tree.map(lambda x: 2 * x, tgt)  # unflattening skips validation
    assert isinstance(doubled, Target) and doubled.tokens == tgt.tokens
    np.testing.assert_allclose(doubled.probs, 2 * tgt.probs)
    np.testing.assert_allclose(doubled.t, 2 * tgt.t)

    same = jax.jit(lambda x: x)(tgt)
    assert isinstance(same, Target) and same.tokens == tgt.tokens
    np.testing.assert_array_equal(same.probs, tgt.probs)
    np.testing.assert_array_equal(same.t, tgt.t)

    sums = jax.jit(lambda x: x.probs.sum(-1) * x.t)(tgt)
    np.testing.assert_allclose(sums, tgt.t, rtol=1e-6)

    other = targets.temperature(nonmonotone=True, n=9)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), tgt, other)
    first_cold = jax.vmap(lambda x: x.probs[0, 0])(stacked)
    np.testing.assert_allclose(first_cold, [tgt.probs[0, 0], other.probs[0, 0]])


def test_target_can_be_built_inside_jit_and_upcasts_half_precision_there():
    t = jnp.linspace(0.0, 1.0, 4)

    @jax.jit
    def build(p):
        return Target(t, p)

    p = jnp.full((4, 2), 0.5, jnp.float16)
    tgt = build(p)
    assert tgt.probs.dtype == tgt.t.dtype == jnp.float32
    np.testing.assert_allclose(tgt.probs, 0.5)


# from_callable


def test_from_callable_maps_fn_over_the_grid():
    t = jnp.linspace(0.0, 2.0, 5)
    fn = lambda s: jax.nn.softmax(jnp.array([0.0, s, -s]))
    tgt = Target.from_callable(fn, t, tokens=("a", "b", "c"))
    np.testing.assert_allclose(
        tgt.probs, _softmax64(np.outer(np.asarray(t), [0, 1, -1])), rtol=1e-6
    )
    np.testing.assert_array_equal(tgt.t, t)
    assert tgt.tokens == ("a", "b", "c")


def test_from_callable_normalize_is_passed_on():
    t = jnp.linspace(0.0, 1.0, 3)
    fn = lambda s: jnp.array([1.0 + s, 1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        Target.from_callable(fn, t)
    tgt = Target.from_callable(fn, t, normalize=True)
    np.testing.assert_allclose(tgt.probs[:, 0], (1 + t) / (2 + t), rtol=1e-6)


def test_from_callable_checks_the_grid():
    with pytest.raises(ValueError, match="t is not increasing"):
        Target.from_callable(lambda s: jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0]))


# from_counts


def test_from_counts_gives_maximum_likelihood_rows_with_exact_zeros():
    counts = np.array([[3, 1, 0], [0, 0, 5], [2, 2, 4]])
    tgt = Target.from_counts([0.0, 1.0, 2.0], counts, tokens="xyz")
    np.testing.assert_allclose(tgt.probs, [[0.75, 0.25, 0], [0, 0, 1], [0.25, 0.25, 0.5]])
    assert tgt.probs[0, 2] == 0.0 and tgt.probs[1, 0] == 0.0
    assert tgt.tokens == ("x", "y", "z")
    assert tgt.probs.dtype == jnp.result_type(float)


@pytest.mark.parametrize("smoothing", [0.5, 1.0, 3.0])
def test_from_counts_smoothing_adds_a_pseudo_count_per_token(smoothing):
    counts = np.array([[3, 1, 0], [0, 0, 0]])
    tgt = Target.from_counts([0.0, 1.0], counts, smoothing=smoothing)
    expected = (counts + smoothing) / (counts.sum(1, keepdims=True) + 3 * smoothing)
    np.testing.assert_allclose(tgt.probs, expected, rtol=1e-6)
    assert np.all(np.asarray(tgt.probs) > 0)


def test_from_counts_all_zero_row_names_the_row_and_the_fix():
    with pytest.raises(ValueError, match=r"all-zero row, row 1 \(t = 0\.5\).*smoothing > 0"):
        Target.from_counts([0.0, 0.5, 1.0], [[1, 2], [0, 0], [3, 0]])


@pytest.mark.parametrize("smoothing", [-1.0, np.nan, np.inf, "one"])
def test_from_counts_rejects_bad_smoothing(smoothing):
    with pytest.raises(ValueError, match="smoothing=.*finite number >= 0"):
        Target.from_counts([0.0, 1.0], [[1, 2], [3, 4]], smoothing=smoothing)


def test_from_counts_rejects_bad_counts():
    with pytest.raises(ValueError, match="counts has negative"):
        Target.from_counts([0.0, 1.0], [[1, -2], [3, 4]])
    with pytest.raises(ValueError, match="counts must be \\(T, V\\)"):
        Target.from_counts([0.0, 1.0], [1, 2])


@settings(max_examples=25)
@given(hnp.arrays(np.int64, (4, 3), elements=st.integers(0, 1000)))
def test_from_counts_rows_are_count_ratios(counts):
    counts[:, 0] += 1  # no empty rows
    tgt = Target.from_counts(np.arange(4.0), counts)
    np.testing.assert_allclose(
        np.asarray(tgt.probs, np.float64) * counts.sum(1, keepdims=True), counts, rtol=1e-5
    )


# from_logits


def test_from_logits_is_the_softmax_of_known_logits():
    # softmax(0, log 3) = (1/4, 3/4); softmax(log 1, log 2, log 5) = (1, 2, 5) / 8; adding a
    # constant to a row changes nothing.
    z = np.array([[0.0, np.log(3.0), -50.0], np.log([1.0, 2.0, 5.0]) + 10.0])
    tgt = Target.from_logits([0.0, 1.0], z, tokens=("a", "b", "c"))
    np.testing.assert_allclose(tgt.probs[0, :2], [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(tgt.probs[1], [1 / 8, 2 / 8, 5 / 8], rtol=2e-6)
    np.testing.assert_allclose(tgt.probs, _softmax64(z), rtol=2e-6, atol=1e-30)
    assert tgt.tokens == ("a", "b", "c")


def test_from_logits_minus_inf_is_an_exact_zero():
    z = np.array([[0.0, -np.inf, np.log(3.0)], [-np.inf, 2.0, -np.inf], [1.0, 1.0, 1.0]])
    tgt = Target.from_logits([0.0, 0.5, 1.0], z)
    p = np.asarray(tgt.probs)
    assert p[0, 1] == 0.0 and p[1, 0] == 0.0 and p[1, 2] == 0.0
    np.testing.assert_allclose(p, [[0.25, 0, 0.75], [0, 1, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    _assert_rows_on_simplex(tgt)


@pytest.mark.parametrize(
    ("value", "row", "what"),
    [(np.nan, 0, "NaN"), (np.nan, 2, "NaN"), (np.inf, 1, r"\+inf")],
)
def test_from_logits_rejects_nan_and_plus_inf_naming_the_row(value, row, what):
    t = [0.0, 0.25, 1.5]
    z = np.zeros((3, 2))
    z[row, 1] = value
    msg = rf"logits contains {what} in row {row} \(t = {re.escape(f'{t[row]:g}')}\).*-inf"
    with pytest.raises(ValueError, match=msg):
        Target.from_logits(t, z)


def test_from_logits_rejects_an_all_minus_inf_row_naming_the_row():
    z = np.array([[0.0, 0.0], [-np.inf, -np.inf], [-np.inf, -np.inf]])
    msg = r"all -inf in row 1 \(t = 0\.25\) and 1 more row.*finite logit"
    with pytest.raises(ValueError, match=msg):
        Target.from_logits([0.0, 0.25, 1.5], z)


def test_from_logits_checks_shapes_and_grid():
    with pytest.raises(ValueError, match="logits must be \\(T, V\\)"):
        Target.from_logits([0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="logits has shape \\(3, 2\\) but t has 2 points"):
        Target.from_logits([0.0, 1.0], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="t has duplicate points"):
        Target.from_logits([0.0, 0.0], np.zeros((2, 2)))


@settings(max_examples=25)
@given(
    hnp.arrays(np.float64, (4, 3), elements=st.floats(-20, 20)),
    hnp.arrays(np.bool_, (4, 3)),
)
def test_from_logits_log_ratios_are_logit_differences(z, masked):
    masked[:, 0] = False  # every row keeps a finite logit
    z = np.where(masked, -np.inf, z)
    tgt = Target.from_logits(np.arange(4.0), z)
    p = np.asarray(tgt.probs, np.float64)
    _assert_rows_on_simplex(tgt)
    np.testing.assert_array_equal(p == 0, masked)
    np.testing.assert_allclose(p, _softmax64(z), rtol=1e-5, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Float types: integers become the default float, half precision becomes float32.

HALF = [jnp.float16, jnp.bfloat16]


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
def test_half_precision_probs_and_grid_are_stored_as_float32_on_the_simplex(half):
    p = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.0, 0.45, 0.55]])
    p_half = p.astype(half)
    # Rounded to half precision, the rows no longer sum to 1 at float32 precision ...
    assert np.max(np.abs(p_half.astype(np.float64).sum(1) - 1)) > 1e-4
    tgt = Target(np.array([0.0, 0.5, 1.0], half), p_half)
    assert tgt.probs.dtype == tgt.t.dtype == jnp.float32
    # ... but they are accepted at their own precision and renormalised in float32.
    _assert_rows_on_simplex(tgt, atol=1e-6)
    rel = float(jnp.finfo(half).eps)
    np.testing.assert_allclose(tgt.probs, p, rtol=2 * rel, atol=0)
    assert tgt.probs[2, 0] == 0.0
    np.testing.assert_array_equal(tgt.t, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
def test_half_precision_rows_far_off_the_simplex_are_still_rejected(half):
    p = np.array([[0.3, 0.3], [0.5, 0.5]], half)
    with pytest.raises(ValueError, match="sum to 1.*normalize=True"):
        Target([0.0, 1.0], p)
    np.testing.assert_allclose(Target([0.0, 1.0], p, normalize=True).probs[0], [0.5, 0.5])
    assert Target([0.0, 1.0], p, normalize=True).probs.dtype == jnp.float32


def test_a_half_precision_grid_does_not_downcast_float32_probs():
    t32 = np.array([0.0, 1.0 + 2**-20], np.float32)  # not representable in float16
    tgt = Target(t32, np.array([[1.0, 0.0], [0.0, 1.0]], np.float16))
    assert tgt.t.dtype == jnp.float32
    assert tgt.t[1] == t32[1]
    tgt = Target(np.array([0.0, 1.0], np.float16), np.full((2, 2), 0.5, np.float32))
    assert tgt.t.dtype == tgt.probs.dtype == jnp.float32


def test_integer_inputs_become_the_default_float():
    for normalize in (False, True):
        tgt = Target(np.array([0, 1]), np.array([[1, 0], [0, 1]]), normalize=normalize)
        assert tgt.t.dtype == tgt.probs.dtype == jnp.result_type(float)
    tgt = Target.from_logits(np.array([0, 1]), np.array([[0, 0], [0, 1]]))
    assert tgt.t.dtype == tgt.probs.dtype == jnp.result_type(float)
    np.testing.assert_allclose(tgt.probs[1], [1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-6)


def test_under_x64_integers_become_float64_and_half_precision_float32():
    with x64():
        tgt = Target(np.array([0, 1]), np.array([[1, 0], [0, 1]]), normalize=True)
        assert tgt.t.dtype == tgt.probs.dtype == jnp.float64
        tgt = Target.from_counts(np.array([0, 1]), np.array([[1, 3], [2, 2]], np.float16))
        assert tgt.probs.dtype == jnp.float64
        tgt = Target(np.array([0.0, 1.0]), np.full((2, 2), 0.5, np.float16))
        assert tgt.t.dtype == tgt.probs.dtype == jnp.float32
        tgt = Target.from_logits([0.0, 1.0], np.zeros((2, 2), jnp.bfloat16))
        assert tgt.probs.dtype == jnp.float32


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
def test_from_logits_takes_the_softmax_of_half_precision_logits_in_float32(half):
    z = np.array([[0.0, 1.1, -2.3, 4.7], [3.3, -np.inf, 0.1, 0.2]]).astype(half)
    tgt = Target.from_logits(np.array([0.0, 1.0], half), z)
    assert tgt.probs.dtype == tgt.t.dtype == jnp.float32
    # Exactly the softmax of the half-precision values, to float32 precision (a softmax taken
    # in half precision would be off by about its eps, 1e-3 or more).
    np.testing.assert_allclose(tgt.probs, _softmax64(z.astype(np.float64)), rtol=2e-6)
    assert tgt.probs[1, 1] == 0.0


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
def test_from_counts_with_half_precision_inputs_is_float32(half):
    counts = np.array([[3, 1], [0, 8]], half)
    tgt = Target.from_counts(np.array([0.0, 1.0], half), counts, smoothing=1.0)
    assert tgt.probs.dtype == tgt.t.dtype == jnp.float32
    np.testing.assert_allclose(tgt.probs, [[4 / 6, 2 / 6], [1 / 10, 9 / 10]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The tail: restricting to tokens, merging the rest


def _kl64(p, q):
    pos = p > 0
    return np.sum(np.where(pos, p * (np.log(np.where(pos, p, 1.0)) - np.log(q)), 0.0), axis=1)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), V=st.integers(4, 40), data=st.data())
def test_chain_rule_behind_restrict_and_with_rest(seed, V, data):
    # For any model q: KL(p || q) = KL(p_B || q_B) + p(R) KL(p(.|R) || q(.|R)) >= the restricted
    # KL weighted by p(S), the identities the docstrings of restrict and with_rest rest on.
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 6)
    tgt = Target.from_logits(t, rng.normal(0, 2, (6, V)))
    p = np.asarray(tgt.probs, np.float64)
    p /= p.sum(axis=1, keepdims=True)
    q = np.exp(rng.normal(0, 2, (6, V)))
    q /= q.sum(axis=1, keepdims=True)
    top = data.draw(st.integers(1, V - 1))
    idx = tgt.top_tokens(top)
    rest = np.setdiff1d(np.arange(V), idx)
    merged = np.asarray(tgt.with_rest(top).probs, np.float64)
    np.testing.assert_allclose(merged[:, :top], p[:, idx], rtol=1e-5, atol=1e-7)
    q_b = np.concatenate([q[:, idx], q[:, rest].sum(axis=1, keepdims=True)], axis=1)
    pr, qr = p[:, rest], q[:, rest]
    inner = _kl64(pr / pr.sum(axis=1, keepdims=True), qr / qr.sum(axis=1, keepdims=True))
    full = _kl64(p, q)
    np.testing.assert_allclose(full, _kl64(merged, q_b) + merged[:, -1] * inner, rtol=1e-4)
    if top >= 2:
        sub = np.asarray(tgt.restrict(idx).probs, np.float64)
        q_s = q[:, idx] / q[:, idx].sum(axis=1, keepdims=True)
        assert np.all(full >= p[:, idx].sum(axis=1) * _kl64(sub, q_s) - 1e-6)


def test_a_fit_of_the_merged_curve_lifts_to_the_full_vocabulary():
    tgt = targets.random_smooth(2, 2, 30, n=24)
    merged = tgt.with_rest(5)
    assert merged.vocab == 6
    fit = jaxfeat.fit(merged, 2, restarts=2)
    lifted = tgt.lift_rest(fit.params, 5)
    full_kl = jaxfeat.kl(tgt.probs, jaxfeat.log_probs(lifted, tgt.t))
    np.testing.assert_allclose(full_kl, fit.kl + tgt.rest_kl(5), rtol=1e-3, atol=1e-5)
    # a different within-rest split than the lift's would not give the identity: it has teeth
    wrong = lifted._replace(c=lifted.c.at[-1].add(1.0))
    bad = jaxfeat.kl(tgt.probs, jaxfeat.log_probs(wrong, tgt.t))
    assert float(jnp.mean(bad)) > float(jnp.mean(fit.kl + tgt.rest_kl(5))) + 1e-4


def test_tail_methods_name_bad_arguments():
    p = [[0.5, 0.5, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]]
    tgt = Target([0.0, 1.0], p, tokens=("a", "b", "c", "d"))
    assert tgt.with_rest(2).tokens == ("a", "b", "<rest>")
    assert tgt.restrict([1, 0]).tokens == ("b", "a")
    with pytest.raises(ValueError, match="top=4 leaves no rest token"):
        tgt.with_rest(4)
    with pytest.raises(ValueError, match="repeats a token index"):
        tgt.restrict([0, 0])
    with pytest.raises(ValueError, match="outside 0..3"):
        tgt.restrict([0, 5])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        tgt.restrict([1])
    with pytest.raises(ValueError, match=r"no probability at row 0 \(t = 0\)"):
        tgt.restrict([2, 3])
    with pytest.raises(ValueError, match="fit the merged target"):
        wide = Features.create(jnp.zeros(4), jnp.zeros((1, 4)), jnp.ones(1), jnp.zeros(1))
        tgt.lift_rest(wide, 2)
