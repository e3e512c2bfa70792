"""The fitting engine: quality bars, batching, masking, determinism, devices, optax plug-in."""

import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxfeat
import jaxfeat._solver
from jaxfeat import targets

from .helpers import random_features, x64

# Tests share a few kernel shapes (grid size, restarts, feature slots) so the suite compiles the
# fitting kernel a handful of times; masked slots leave results unchanged
# (test_masked_slots_are_inert).
SMALL = dict(restarts=4, k_max=4)
N = 40


@pytest.mark.parametrize(("m", "k"), [(1, 5), (2, 10), (4, 20)])
def test_oscillating_quality_bar(m, k):
    res = jaxfeat.fit(targets.oscillating(m), k, k_max=20)
    assert res.mean_kl <= 1e-3, float(res.mean_kl)
    assert bool(res.converged)
    assert res.params.l.shape == (k, 3)


def test_html_binary_feature_is_fitted_exactly_by_one_feature():
    tgt = targets.html_closing_tag()
    res = jaxfeat.fit(tgt, 1)
    assert res.mean_kl <= 1e-6
    np.testing.assert_allclose(jaxfeat.probs(res.params, tgt.t), tgt.probs, atol=1e-5)


def test_random_three_feature_model_is_refit_by_three_features_in_float64():
    with x64():
        t = jnp.linspace(0.0, 1.0, 128, dtype=jnp.float64)
        for seed in range(3):
            prm = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), random_features(seed, 3, 3))
            tgt = jaxfeat.Target(t, jaxfeat.probs(prm, t))
            res = jaxfeat.fit(tgt, 3, key=seed)
            assert res.params.c.dtype == jnp.float64
            assert res.mean_kl <= 1e-5, (seed, float(res.mean_kl))


def test_reported_losses_agree_with_the_public_model():
    tgt = targets.temperature(nonmonotone=True, n=N)
    res = jaxfeat.fit(tgt, 2, **SMALL)
    direct = jaxfeat.kl(tgt.probs, jaxfeat.log_probs(res.params, tgt.t))
    np.testing.assert_allclose(res.kl, np.maximum(direct, 0), rtol=1e-4, atol=1e-7)
    assert float(res.mean_kl) == pytest.approx(float(direct.mean()), rel=1e-4, abs=1e-7)
    assert float(res.max_kl) == pytest.approx(float(direct.max()), rel=1e-4, abs=1e-7)
    assert float(res.mean_kl) == pytest.approx(float(res.restart_losses.min()), rel=1e-3, abs=1e-7)
    assert res.restart_losses.shape == (4,) and res.restart_converged.shape == (4,)
    assert 0 < int(res.num_steps) <= 200


def test_two_features_beat_one_on_the_nonmonotone_temperature():
    one, two = jaxfeat.fit_ks(targets.temperature(nonmonotone=True, n=N), [1, 2], **SMALL)
    assert two.mean_kl < 0.6 * one.mean_kl
    assert one.params.l.shape == (1, 3) and two.params.l.shape == (2, 3)


def test_more_features_never_fit_worse():
    res = jaxfeat.fit_ks(targets.oscillating(1, n=N), [1, 2, 3, 4], **SMALL)
    losses = [float(r.mean_kl) for r in res]
    assert all(b <= a * 1.01 + 1e-7 for a, b in itertools.pairwise(losses)), losses


def test_fit_batch_equals_individual_fits():
    tgts = [targets.oscillating(1, n=N), targets.random_smooth(3, 2, 3, n=N)]
    probs = jnp.stack([x.probs for x in tgts])
    batch = jaxfeat.fit_batch(tgts[0].t, probs, 3, key=7, **SMALL)
    keys = jax.random.split(jax.random.key(7), 2)
    for i, tgt in enumerate(tgts):
        single = jaxfeat.fit_batch(tgt.t, tgt.probs[None], 3, key=keys[i : i + 1], **SMALL)
        np.testing.assert_allclose(batch.mean_kl[i], single.mean_kl[0], rtol=1e-4, atol=1e-8)


def test_a_k_sweep_compiles_once():
    tgt = targets.oscillating(1, n=N)
    jaxfeat.fit(tgt, 2, **SMALL)
    size = jaxfeat._solver.fit_kernel._cache_size()
    for k in (1, 3, 4):
        res = jaxfeat.fit(tgt, k, **SMALL)
        assert res.params.l.shape == (k, 3)
    jaxfeat.fit(targets.oscillating(2, n=N), 4, **SMALL)
    assert jaxfeat._solver.fit_kernel._cache_size() == size


def test_masked_slots_are_inert():
    tgt = targets.oscillating(1, n=N)
    padded = jaxfeat.fit(tgt, 2, key=3, **SMALL)
    exact = jaxfeat.fit(tgt, 2, restarts=4, key=3)
    np.testing.assert_allclose(padded.mean_kl, exact.mean_kl, rtol=1e-3, atol=1e-7)
    batch = jaxfeat.fit_batch(tgt.t, tgt.probs[None], 2, **SMALL)
    np.testing.assert_array_equal(batch.params.l[0, 2:], 0.0)
    assert batch.params.l.shape == (1, 4, 3)
    assert int(batch.k[0]) == 2


def test_starts_do_not_depend_on_the_slot_count():
    # required_features pads slots to a multiple of 8; JAX's partitionable threefry (the default)
    # draws a prefix of the same values at every length, so the restarts start alike.
    tgt = targets.oscillating(2, n=N)
    u = (tgt.t - tgt.t[0]) / (tgt.t[-1] - tgt.t[0])
    g = jaxfeat._hinge.Grid(u, jnp.asarray(1.0 / (N - 1), tgt.probs.dtype), "relu")
    starts = []
    for k_max in (16, 24, 32):
        members = [
            jaxfeat._hinge.init_member(
                g,
                jax.random.key(5),
                r,
                jnp.asarray(12),
                k_max,
                8,
                tgt.probs,
                jnp.full(k_max, jnp.nan),
                jnp.ones(k_max),
                jaxfeat.SolverSettings(),
            )
            for r in range(8)  # restarts 3, 5 and 7 draw directions, 4 to 7 knot jitter
        ]
        starts.append(np.stack([np.concatenate([m.tau[:12], m.s[:12]]) for m in members]))
    np.testing.assert_array_equal(starts[0], starts[1])
    np.testing.assert_array_equal(starts[0], starts[2])


def test_same_key_same_result_and_other_key_runs():
    tgt = targets.oscillating(1, n=N)
    a = jaxfeat.fit(tgt, 3, key=11, **SMALL)
    b = jaxfeat.fit(tgt, 3, key=11, **SMALL)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    c = jaxfeat.fit(tgt, 3, key=jax.random.key(12), **SMALL)
    assert np.isfinite(c.mean_kl)


@pytest.mark.parametrize("activation", ["jumprelu", "softplus"])
def test_other_encoders_fit_and_map_onto_the_public_model(activation):
    tgt = targets.temperature(nonmonotone=True, n=N)
    res = jaxfeat.fit(tgt, 3, activation=activation, **SMALL)
    assert res.activation == activation
    direct = jaxfeat.kl(tgt.probs, jaxfeat.log_probs(res.params, tgt.t, activation))
    np.testing.assert_allclose(res.kl, np.maximum(direct, 0), rtol=1e-3, atol=1e-6)
    relu1 = jaxfeat.fit(tgt, 1, **SMALL)
    assert res.mean_kl < relu1.mean_kl


def test_jumprelu_fits_a_step_that_relu_cannot():
    t = np.linspace(0.0, 1.0, N)
    z = np.where(t[:, None] > 0.5, [2.0, 0.0, -1.0], [0.0, 0.0, 0.0])
    tgt = jaxfeat.Target.from_logits(t, z)
    jump = jaxfeat.fit(tgt, 1, activation="jumprelu", **SMALL)
    relu = jaxfeat.fit(tgt, 1, **SMALL)
    assert jump.mean_kl < 1e-4 < relu.mean_kl


def test_any_optax_optimizer_plugs_in():
    tgt = targets.oscillating(1, n=N)
    res = jaxfeat.fit(tgt, 3, optimizer=optax.adam(3e-2), max_steps=300, restarts=4)
    assert np.isfinite(res.mean_kl) and res.mean_kl < 0.05
    lbfgs = jaxfeat.fit(tgt, 3, optimizer=optax.lbfgs(), max_steps=100, restarts=4)
    assert lbfgs.mean_kl < 0.01


def test_a_step_limit_too_small_reports_not_converged():
    res = jaxfeat.fit(targets.oscillating(2, n=N), 4, max_steps=2, **SMALL)
    assert not bool(res.converged)
    assert not np.any(res.restart_converged)


def test_zero_probability_targets_fit_without_nan():
    t = np.linspace(0.0, 1.0, N)
    p = np.stack([np.clip(t, 0.0, 1.0), 1 - t, np.zeros_like(t)], axis=1)
    res = jaxfeat.fit(jaxfeat.Target(t, p), 2, **SMALL)
    assert np.isfinite(res.mean_kl) and np.all(np.isfinite(res.params.l))
    assert res.mean_kl < 0.05


def test_huge_logits_stay_finite_in_float32():
    t = np.linspace(0.0, 1.0, N)
    z = 1e4 * np.stack([np.sin(3 * t), np.cos(3 * t), t], axis=1)
    tgt = jaxfeat.Target.from_logits(t, z.astype(np.float32))
    res = jaxfeat.fit(tgt, 2, **SMALL)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(res.params))
    assert np.isfinite(res.mean_kl)


def test_fit_batch_runs_inside_jit_and_vmap_friendly_shapes():
    tgt = targets.oscillating(1, n=N)

    @jax.jit
    def best_loss(probs):
        return jaxfeat.fit_batch(tgt.t, probs, 2, **SMALL).mean_kl

    out = best_loss(jnp.stack([tgt.probs, tgt.probs]))
    assert out.shape == (2,) and np.all(np.isfinite(out))


def test_fit_result_is_a_pytree():
    res = jaxfeat.fit(targets.html_closing_tag(), 1)
    leaves, tree = jax.tree.flatten(res)
    back = jax.tree.unflatten(tree, leaves)
    assert dataclasses.is_dataclass(back) and back.activation == "relu"


def test_batch_is_sharded_over_several_cpu_devices():
    # Different targets per device, so the devices' loops run for different numbers of steps;
    # 3 targets are padded to 4 over 2 devices, then trimmed. One device (devices=) must agree.
    code = textwrap.dedent(
        f"""
        import jax, numpy as np, jaxfeat
        from jaxfeat import targets
        assert len(jax.devices()) == 2
        tgt = targets.oscillating(1, n={N})
        probs = np.stack([tgt.probs] + [targets.random_smooth(s, 2, 3, n={N}).probs
                                        for s in range(2)])
        both = jaxfeat.fit_batch(tgt.t, probs, 2, restarts=4)
        one = jaxfeat.fit_batch(tgt.t, probs, 2, restarts=4, devices=jax.devices()[:1])
        assert both.mean_kl.shape == (3,)
        np.testing.assert_allclose(both.mean_kl, one.mean_kl, rtol=1e-3, atol=1e-7)
        print("ok")
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "ok"


# ---------------------------------------------------------------------------------------------
# Large vocabularies: the matrix-free Gauss-Newton path

DENSE = jaxfeat.SolverSettings(lm_max_params=10**9)
MATRIX_FREE = jaxfeat.SolverSettings(lm_max_params=0)


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_matrix_free_path_takes_the_dense_paths_steps(activation):
    # Same members, same phases: conjugate gradients to 1e-2 solve the same damped systems, so
    # ReLU restarts land where dense Cholesky steps take them, to a fraction of a percent. A
    # JumpReLU restart can branch to another local minimum on a slightly different
    # step; the best restart must still match.
    tgt = targets.random_smooth(1, 2, 40, n=N)
    dense = jaxfeat.fit(tgt, 3, activation=activation, solver=DENSE, **SMALL)
    free = jaxfeat.fit(tgt, 3, activation=activation, solver=MATRIX_FREE, **SMALL)
    if activation == "relu":
        np.testing.assert_allclose(free.restart_losses, dense.restart_losses, rtol=1e-2)
    assert float(free.mean_kl) <= 1.01 * float(dense.mean_kl)
    # ... and it is a model of the public class, whose loss the fit reports
    lq = jaxfeat.log_probs(free.params, tgt.t, activation)
    np.testing.assert_allclose(jaxfeat.kl(tgt.probs, lq).mean(), free.mean_kl, rtol=1e-4)


def test_large_models_take_the_matrix_free_path_by_default():
    # (k + 1) V = 5 * 200 > lm_max_params: the default is matrix-free Gauss-Newton, and it refits
    # a random 3-feature model on 200 tokens far below its own starting loss.
    t = jnp.linspace(0.0, 1.0, N)
    tgt = jaxfeat.Target(t, jaxfeat.probs(random_features(3, 3, 200, scale=0.5), t))
    res = jaxfeat.fit(tgt, 3, **SMALL)
    assert res.params.l.shape == (3, 200)
    assert float(res.mean_kl) < 1e-3, float(res.mean_kl)


def test_matrix_free_path_in_float64_jit_and_vmap():
    with x64():
        t = jnp.linspace(0.0, 1.0, N, dtype=jnp.float64)
        prm = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), random_features(4, 2, 40))
        probs = jaxfeat.probs(prm, t)

        @jax.jit
        def fit_two(p):
            return jaxfeat.fit_batch(t, p, 2, solver=MATRIX_FREE, **SMALL)

        res = fit_two(jnp.stack([probs, probs[::-1]]))
        assert res.params.c.dtype == jnp.float64
        assert float(res.mean_kl[0]) < 1e-6, float(res.mean_kl[0])
