"""The bad-input matrix: every malformed input raises a ValueError that names the argument."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxfeat
from jaxfeat import Target, targets

T = np.linspace(0.0, 1.0, 5)
P = np.full((5, 3), 1 / 3)


def _with(a, idx, value):
    a = np.array(a, dtype=np.float64)
    a[idx] = value
    return a


TARGET_CASES = [
    ("nan in probs", dict(t=T, probs=_with(P, (1, 1), np.nan)), "probs.*NaN"),
    ("inf in probs", dict(t=T, probs=_with(P, (1, 1), np.inf)), "probs.*NaN or inf"),
    ("nan in t", dict(t=_with(T, 2, np.nan), probs=P), "t contains NaN"),
    (
        "negative probability",
        dict(t=T, probs=_with(_with(P, (0, 0), -0.1), (0, 1), 0.1 + 2 / 3)),
        "probs has negative",
    ),
    ("rows not normalised", dict(t=T, probs=P * 1.1), "sum to 1.*normalize=True"),
    ("all-zero row", dict(t=T, probs=_with(P, 2, 0.0)), "all-zero row"),
    ("shape mismatch", dict(t=T[:4], probs=P), "probs has shape.*t has 4 points"),
    ("unsorted grid", dict(t=T[::-1], probs=P), "not increasing.*argsort"),
    ("duplicate grid points", dict(t=_with(T, 1, 0.0), probs=P), "duplicate"),
    ("one grid point", dict(t=T[:1], probs=P[:1]), "at least 2"),
    ("2-D grid", dict(t=T[None], probs=P), "1-D grid"),
    ("one token", dict(t=T, probs=np.ones((5, 1))), "V >= 2"),
    ("3-D probs", dict(t=T, probs=P[None]), r"\(T, V\)"),
    ("wrong token names", dict(t=T, probs=P, tokens=["a", "b"]), "tokens has 2 names"),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "match"), TARGET_CASES, ids=[c[0] for c in TARGET_CASES]
)
def test_target_rejects(case, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Target(**kwargs)


def test_normalize_fixes_unnormalised_rows_and_zeros_are_valid():
    tgt = Target(T, P * 1.1, normalize=True)
    np.testing.assert_allclose(tgt.probs.sum(1), 1.0, rtol=1e-6)
    Target(T, np.tile([0.0, 0.5, 0.5], (5, 1)))


COUNT_CASES = [
    ("negative counts", np.array([[1, -1], [2, 2]]), "negative"),
    ("all-zero counts row", np.array([[0, 0], [2, 2]]), "all-zero row.*smoothing"),
    ("nan counts", np.array([[np.nan, 1], [2, 2]]), "NaN"),
]


@pytest.mark.parametrize(("case", "counts", "match"), COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_from_counts_rejects(case, counts, match):
    with pytest.raises(ValueError, match=match):
        Target.from_counts([0.0, 1.0], counts)


def test_from_counts_smoothing_rescues_empty_rows_and_ml_keeps_zeros():
    smoothed = Target.from_counts([0.0, 1.0], [[0, 0], [3, 1]], smoothing=0.5)
    np.testing.assert_allclose(smoothed.probs[0], [0.5, 0.5])
    ml = Target.from_counts([0.0, 1.0], [[3, 0], [3, 1]])
    np.testing.assert_allclose(ml.probs, [[1.0, 0.0], [0.75, 0.25]])
    with pytest.raises(ValueError, match="smoothing"):
        Target.from_counts([0.0, 1.0], [[3, 0], [3, 1]], smoothing=-1.0)


def test_from_logits_rejects_nan_and_from_callable_builds():
    with pytest.raises(ValueError, match="logits contains NaN"):
        Target.from_logits(T, _with(np.zeros((5, 3)), (0, 0), np.nan))
    tgt = Target.from_callable(lambda s: jnp.array([s, 1 - s]) * 0.5 + 0.25, T)
    assert tgt.probs.shape == (5, 2)


GOOD = targets.oscillating(1, n=16)

FIT_CASES = [
    ("k = 0", dict(k=0), "k=0 must be at least 1"),
    ("k negative", dict(k=-2), "k=-2"),
    ("k not an integer", dict(k=2.5), "k=2.5 must be a positive integer"),
    ("restarts = 0", dict(k=1, restarts=0), "restarts=0"),
    ("max_steps = 0", dict(k=1, max_steps=0), "max_steps=0"),
    ("unknown activation", dict(k=1, activation="tanh"), "activation='tanh'.*use one of"),
    ("k_max below k", dict(k=3, k_max=2), "k_max=2 is smaller"),
    ("init_knots shape", dict(k=2, init_knots=[0.5]), "init_knots must have shape"),
    ("optimizer not optax", dict(k=1, optimizer="adam"), "optimizer must be an optax"),
    ("optimizer a bare function", dict(k=1, optimizer=lambda g: g), "GradientTransformation"),
    ("solver not settings", dict(k=1, solver={"window": 3}), "solver must be a jaxfeat"),
    ("no devices", dict(k=1, devices=[]), "devices is empty"),
]


@pytest.mark.parametrize(("case", "kwargs", "match"), FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_rejects(case, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxfeat.fit(GOOD, **kwargs)


def test_fit_rejects_a_non_target():
    with pytest.raises(ValueError, match="target must be a jaxfeat.Target"):
        jaxfeat.fit(GOOD.probs, 1)


BATCH_CASES = [
    ("probs not batched", dict(probs=P), "must be \\(B, T, V\\).*batch axis"),
    ("probs grid mismatch", dict(probs=np.full((2, 4, 3), 1 / 3)), "t has 5 points"),
    ("negative probs", dict(probs=_with(P, (0, 0), -1.0)[None]), "negative"),
    ("nan probs", dict(probs=_with(P, (0, 0), np.nan)[None]), "NaN"),
    ("unnormalised", dict(probs=P[None] * 2), "sum to 1"),
    ("unsorted t", dict(t=T[::-1]), "not increasing"),
    ("k list of the wrong length", dict(probs=np.stack([P, P]), k=[1, 2, 3]), "k has shape.*B = 2"),
    ("k as a matrix", dict(probs=np.stack([P, P]), k=[[1], [2]]), "k has shape"),
    ("directions without knots", dict(init_directions=[[1.0]]), "needs init_knots"),
    (
        "directions of the wrong shape",
        dict(init_knots=[[0.5]], init_directions=[[1.0, 1.0]]),
        "init_directions must be \\(B, k_max\\)",
    ),
    (
        "directions not +-1",
        dict(init_knots=[[0.5]], init_directions=[[0.5]]),
        "init_directions must hold \\+1",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "match"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_fit_batch_rejects(case, kwargs, match):
    args = dict(t=T, probs=P[None], k=1) | kwargs
    with pytest.raises(ValueError, match=match):
        jaxfeat.fit_batch(**args)


TARGET_LIBRARY_CASES = [
    (targets.oscillating, dict(m=0), "m=0"),
    (targets.oscillating, dict(m=1, vocab=2), "vocab=2"),
    (targets.tuning_curves, dict(n_tokens=1, width=0.1), "n_tokens=1"),
    (targets.tuning_curves, dict(n_tokens=3, width=-0.1), "width=-0.1"),
    (targets.random_smooth, dict(key=0, bandwidth=0, vocab=3), "bandwidth=0"),
    (targets.temperature, dict(n=1), "at least 2"),
    (targets.html_closing_tag, dict(p_on=(0.5, 0.5, 0.1)), "p_on"),
]


def test_fit_rejects_misspelt_options_like_any_python_function():
    with pytest.raises(TypeError, match="restart"):
        jaxfeat.fit(GOOD, 1, restart=3)


def test_half_precision_inputs_are_fitted_in_float32():
    # float16 has ~3 significant digits: KL values and Gauss-Newton systems in it would be noise.
    p16 = np.asarray(GOOD.probs, np.float16)
    p16 = p16 / p16.sum(axis=-1, keepdims=True)
    res = jaxfeat.fit_batch(GOOD.t, p16[None].astype(np.float16), 2, restarts=2, max_steps=10)
    assert res.mean_kl.dtype == jnp.float32 and res.params.l.dtype == jnp.float32
    assert np.isfinite(res.mean_kl).all()


@pytest.mark.parametrize(("fn", "kwargs", "match"), TARGET_LIBRARY_CASES)
def test_target_library_rejects(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
