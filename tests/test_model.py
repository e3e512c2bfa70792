"""The model functions: values, gradients, jit/vmap, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxfeat
from jaxfeat import Features

from .helpers import numpy_kl, random_features, x64

T_GRID = jnp.linspace(0.0, 1.0, 17)


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "softplus"])
def test_logits_match_a_direct_numpy_formula(activation):
    p = random_features(0, k=3, vocab=5)._replace(theta=jnp.array([0.0, 0.1, 0.2]))
    t = np.asarray(T_GRID, np.float64)
    x = t[:, None] * np.asarray(p.w) + np.asarray(p.b)
    a = {
        "relu": np.maximum(x, 0),
        "jumprelu": np.where(x > np.asarray(p.theta), x, 0),
        "softplus": np.log1p(np.exp(x)),
    }[activation]
    expected = np.asarray(p.c) + a @ np.asarray(p.l)
    np.testing.assert_allclose(
        jaxfeat.logits(p, T_GRID, activation), expected, rtol=1e-5, atol=1e-5
    )
    q = jaxfeat.probs(p, T_GRID, activation)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(jaxfeat.log_probs(p, T_GRID, activation)), q, rtol=1e-5)


def test_kl_matches_numpy_and_handles_zero_targets():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=10)
    p[:, 2] = 0.0
    p /= p.sum(1, keepdims=True)
    q = rng.dirichlet(np.ones(6), size=10)
    got = jaxfeat.kl(jnp.asarray(p, jnp.float32), jnp.log(jnp.asarray(q, jnp.float32)))
    np.testing.assert_allclose(got, numpy_kl(p, q), rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(got))


def test_kl_gradient_is_finite_at_zero_target_probabilities():
    p = jnp.array([0.0, 0.3, 0.7])
    g_logq = jax.grad(lambda lq: jaxfeat.kl(p, lq))(jnp.log(jnp.array([0.2, 0.3, 0.5])))
    np.testing.assert_allclose(g_logq, -p)
    g_z = jax.grad(lambda z: jaxfeat.kl(p, jax.nn.log_softmax(z)))(jnp.array([50.0, 0.0, -50.0]))
    assert np.all(np.isfinite(g_z))


def test_kl_and_mean_kl_match_hand_and_numpy_values_with_zero_targets():
    # p = (0, 1/2, 1/2), q = (1/5, 2/5, 2/5): KL = 2 * 1/2 * log((1/2) / (2/5)) = log(5/4), the
    # zero entry contributing nothing (0 log 0 = 0).
    p = np.array([0.0, 0.5, 0.5])
    q = np.array([0.2, 0.4, 0.4])
    got = jaxfeat.kl(jnp.asarray(p, jnp.float32), jnp.log(jnp.asarray(q, jnp.float32)))
    np.testing.assert_allclose(got, np.log(1.25), rtol=1e-6)
    # The comparison is tight enough to reject a KL that smooths log p instead of using 0 log 0.
    smoothed = np.sum(p * (np.log(p + 1e-3) - np.log(q)))
    assert not np.allclose(smoothed, np.log(1.25), rtol=1e-4, atol=1e-6)

    # mean_kl of a model against rows with zeros, versus a NumPy softmax of the NumPy logits.
    prm = random_features(3, k=2, vocab=3)
    t = np.asarray(T_GRID, np.float64)
    a = np.maximum(t[:, None] * np.asarray(prm.w) + np.asarray(prm.b), 0)
    np.testing.assert_allclose(jaxfeat.activations(prm, T_GRID), a, rtol=1e-5, atol=1e-6)
    z = np.asarray(prm.c) + a @ np.asarray(prm.l)
    q_model = np.exp(z - z.max(1, keepdims=True))
    q_model /= q_model.sum(1, keepdims=True)
    np.testing.assert_allclose(jaxfeat.probs(prm, T_GRID), q_model, rtol=1e-5, atol=1e-7)
    target = np.tile(p, (len(t), 1))
    target[::2] = [0.6, 0.4, 0.0]
    expected = numpy_kl(target, q_model).mean()
    got = jaxfeat.mean_kl(prm, T_GRID, jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_gradients_of_the_loss_match_finite_differences(activation):
    with x64():
        prm = random_features(1, k=2, vocab=3)
        prm = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), prm)
        t = jnp.linspace(0.013, 0.987, 9, dtype=jnp.float64)  # no grid point on a knot
        target = jax.nn.softmax(jax.random.normal(jax.random.key(2), (9, 3), jnp.float64))

        def loss(c, l, w, b):
            return jaxfeat.mean_kl(Features.create(c, l, w, b), t, target, activation)

        # jit: one compiled program per derivative instead of hundreds of eager dispatches
        check_grads(jax.jit(loss), (prm.c, prm.l, prm.w, prm.b), order=2, modes=("fwd", "rev"))


def test_model_functions_jit_vmap_and_do_not_recompile():
    f = jax.jit(jaxfeat.mean_kl, static_argnames="activation")
    batch = jax.vmap(lambda s: random_features(s, 2, 4))(jax.random.split(jax.random.key(0), 3))
    target = jnp.full((17, 4), 0.25)
    vals = jax.vmap(lambda prm: f(prm, T_GRID, target))(batch)
    assert vals.shape == (3,)
    f(random_features(0, 2, 4), T_GRID, target)
    size = f._cache_size()
    f(random_features(1, 2, 4), T_GRID + 1.0, target * 1.0)
    assert f._cache_size() == size


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="activation='gelu'.*use one of"):
        jaxfeat.logits(random_features(0, 1, 2), T_GRID, "gelu")
