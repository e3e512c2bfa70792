"""The engine's internals (jaxfeat/_hinge.py, jaxfeat/_solver.py): the work queue, the portable
Cholesky solve, and starts that stay finite."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxfeat
import jaxfeat._hinge
import jaxfeat._solver
from jaxfeat import targets

from .test_fit import SMALL, N


def test_work_queue_result_does_not_depend_on_the_lane_count():
    # Members (targets x restarts) pass through a work queue of vmapped lanes, each taking the
    # next member when its own finishes; a member's fit must not depend on how many lanes there
    # are or which lane runs it. One lane runs every member alone, in order.
    tgt = targets.oscillating(1, n=N)
    probs = jnp.stack([tgt.probs] + [targets.random_smooth(s, 2, 3, n=N).probs for s in (1, 2)])
    keys = jax.random.split(jax.random.key(0), 3)
    ks = jnp.array([2, 3, 4])
    knots = jnp.full((3, SMALL["k_max"]), jnp.nan)
    kernel = jaxfeat._solver.fit_kernel
    kw = dict(
        activation="relu",
        max_steps=200,
        optimizer=None,
        method="dense",
        solver=jaxfeat.SolverSettings(),
        **SMALL,
    )
    dirs = jnp.ones_like(knots)
    runs = {n: kernel(tgt.t, probs, ks, keys, knots, dirs, lanes=n, **kw) for n in (1, 6)}
    one = runs[1]
    assert np.all(np.asarray(one.phase) == 4)  # every member ran to the end
    assert len(set(np.asarray(one.steps).ravel())) > 1  # members finish at different times
    for n in (6,):
        np.testing.assert_allclose(runs[n].loss, one.loss, rtol=1e-3)
        assert np.mean(np.asarray(runs[n].steps) == np.asarray(one.steps)) >= 0.9
        np.testing.assert_array_equal(runs[n].mask, one.mask)


def test_portable_cholesky_matches_lapack():
    # Sharded CPU runs solve the Gauss-Newton systems without LAPACK; the two must agree.
    A = jax.random.normal(jax.random.key(0), (6, 15, 15))  # (k + 1) V + k for k = 3, V = 3
    H = A @ jnp.swapaxes(A, 1, 2) + 0.1 * jnp.eye(15)
    g = jax.random.normal(jax.random.key(1), (6, 15, 3))
    x = jax.vmap(jaxfeat._hinge.spd_solve)(H, g)
    np.testing.assert_allclose(H @ x, g, rtol=1e-3, atol=1e-3)
    lapack = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H, lower=True), g)
    np.testing.assert_allclose(x, lapack, rtol=1e-3, atol=1e-4)


def test_a_warm_start_takes_a_fits_knots_and_directions():
    # A 3-feature model whose first feature faces left: one restart from its knots and
    # directions refits it; the same knots all facing right (the default) start elsewhere.
    tgt = targets.oscillating(1, n=48)
    t = np.asarray(tgt.t)
    model = jaxfeat.Features.create(
        c=jnp.zeros(3),
        l=jnp.array([[2.0, -1.0, 0.0], [0.0, 2.5, -2.0], [-3.0, 0.0, 1.5]]),
        w=jnp.array([-4.0, 3.0, 5.0]),
        b=jnp.array([1.2, -1.5, -4.0]),
    )
    tgt = jaxfeat.Target(tgt.t, jnp.exp(jaxfeat.log_probs(model, tgt.t)))
    knots = -np.asarray(model.b) / np.asarray(model.w)
    assert np.all((knots > t[0]) & (knots < t[-1]))
    warm = dict(init_knots=knots[None], init_directions=np.sign(np.asarray(model.w))[None])
    res = jaxfeat.fit_batch(tgt.t, tgt.probs[None], 3, restarts=1, max_steps=60, **warm)
    right = jaxfeat.fit_batch(
        tgt.t, tgt.probs[None], 3, restarts=1, max_steps=60, init_knots=knots[None]
    )
    assert float(res.mean_kl[0]) < 1e-6 < float(right.mean_kl[0])


def test_coincident_start_knots_give_a_finite_fit():
    # Eight knots within a tenth of a 64-point grid coincide on grid cells; the float32 ridge
    # start then had a negative Cholesky pivot and the only restart stayed NaN to the end.
    tgt = targets.oscillating(2, n=64)
    t = np.asarray(tgt.t)
    knots = t[0] + (t[-1] - t[0]) * np.linspace(0.0, 0.1, 8)
    res = jaxfeat.fit(tgt, 8, restarts=1, init_knots=knots)
    assert np.isfinite(float(res.mean_kl))
    # never worse than the start it falls back to: constant logits, the mean clipped log p
    z = np.maximum(np.log(np.asarray(tgt.probs, np.float64)), -20.0)
    c = (z - z.mean(axis=1, keepdims=True)).mean(axis=0)
    start = jaxfeat.kl(tgt.probs, jax.nn.log_softmax(jnp.asarray(c, jnp.float32))[None]).mean()
    assert float(res.mean_kl) <= float(start)
