"""Tests for the feature-count search and the estimates (jaxfeat/_count.py)."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

import jaxfeat
from jaxfeat import _count
from jaxfeat._count import predicted_features, required_features, required_features_batch

# ---------------------------------------------------------------------------------------------
# required_features


def test_required_features_oscillating():
    tgt = jaxfeat.targets.oscillating(1, n=128)  # the docstring's example: one compiled fit
    req = required_features(tgt, 1e-3)
    assert req.k is not None and req.lower_bound <= req.k <= 5
    assert req.fit.mean_kl <= 1e-3 and req.fit.params.num_features == req.k
    assert req.bounds[req.lower_bound - 2] > 1e-3 >= req.bounds[req.lower_bound - 1]
    fitted = ~np.isnan(req.losses)
    assert np.all(np.isnan(req.losses[: req.lower_bound - 1]))
    assert np.all(req.bounds[fitted] <= req.losses[fitted])  # sound on real fits too


class _FakeFits:
    """Stands in for fit_batch: loss = scale * k^-4 with a per-target scale, no compilation.

    With ``step_gain`` the loss falls as ``(200 / max_steps) ** step_gain``: longer runs find
    better fits, as the second try at the decisive count assumes.
    """

    def __init__(self, step_gain: float = 0.0):
        self.calls = []
        self.step_gain = step_gain

    def __call__(
        self,
        t,
        probs,
        k,
        *,
        activation,
        restarts,
        max_steps,
        key,
        k_max,
        init_knots,
        init_directions=None,
        solver=None,
        devices=None,
        progress=None,
    ):
        ks = np.asarray(k)
        B, T, V = probs.shape
        dirs = None if init_directions is None else np.asarray(init_directions)
        self.calls.append((B, k_max, ks.tolist(), np.asarray(init_knots), max_steps, dirs))
        gain = (200 / max_steps) ** self.step_gain
        loss = jnp.asarray(100.0 * np.asarray(probs[:, 6, 0]) * ks.astype(float) ** -4 * gain)
        params = jaxfeat.Features.create(
            jnp.zeros((B, V)), jnp.ones((B, k_max, V)), jnp.ones((B, k_max)), jnp.zeros((B, k_max))
        )
        return jaxfeat.FitResult(
            params=params,
            kl=jnp.broadcast_to(loss[:, None], (B, T)),
            mean_kl=loss,
            max_kl=4 * loss,
            converged=jnp.ones(B, bool),
            num_steps=jnp.ones(B, int),
            restart_losses=loss[:, None],
            restart_converged=jnp.ones((B, 1), bool),
            k=jnp.asarray(ks),
            activation=activation,
        )


def test_required_features_search(monkeypatch):
    fake = _FakeFits()
    monkeypatch.setattr(_count, "fit_batch", fake)
    tgts = [jaxfeat.targets.oscillating(m, n=24) for m in (1, 2)]
    scale = [float(tg.probs[6, 0]) for tg in tgts]
    out = required_features_batch(tgts, 1e-3, k_max=20)
    assert out[0].k != out[1].k
    for r, s in zip(out, scale, strict=True):
        expect = max(r.lower_bound, int(np.ceil((100 * s / 1e-3) ** 0.25 - 1e-9)))
        assert r.k == expect and r.lower_bound <= r.k
        assert r.fit.params.num_features == r.k
        fitted = np.nonzero(~np.isnan(r.losses))[0] + 1
        assert fitted[0] == r.lower_bound and fitted[-1] >= r.k  # contiguous scan from the bound
        np.testing.assert_array_equal(fitted, np.arange(fitted[0], fitted[-1] + 1))
    for B, slots, ks, knots, _, dirs in fake.calls:  # fixed shapes: few compilations
        assert B % 4 == 0 and B & (B - 1) == 0 and slots % 8 == 0
        assert max(ks) <= slots < max(ks) + 8  # k rounded up to the slot step
        assert knots.shape == dirs.shape == (B, slots) and np.all(np.isfinite(knots[:, 0]))
    # Where the bracket stayed open, the second try ran at the count below k, with twice the
    # steps: the segmentation's start and warm starts, four rows per target.
    polish = [c for c in fake.calls if c[4] == 400]
    assert polish and {c[4] for c in fake.calls} == {200, 400}
    assert all(set(c[2]) <= {r.k - 1 for r in out} for c in polish)
    # max_kl is 4x mean_kl in the fake: more features.
    worse = required_features(tgts[0], 1e-3, metric="max_kl", k_max=20)
    assert worse.k > out[0].k
    # A k_max below the certified bound: nothing fitted.
    n_calls = len(fake.calls)
    none = required_features(tgts[1], 1e-3, k_max=2)
    assert none.k is None and none.fit is None and none.lower_bound == 3
    assert np.all(np.isnan(none.losses)) and len(fake.calls) == n_calls


def test_required_features_second_try_closes_the_bracket(monkeypatch):
    # Fits with twice the steps are 2x better in this fake: the second try at the decisive count
    # succeeds, and the search goes on down until it fails or meets the certified bound.
    tgt = jaxfeat.targets.oscillating(2, n=24)
    s = float(tgt.probs[6, 0])
    monkeypatch.setattr(_count, "fit_batch", _FakeFits(step_gain=1.0))
    r = required_features(tgt, 1e-3, k_max=20)
    reach = lambda gain: int(np.ceil((100 * s * gain / 1e-3) ** 0.25 - 1e-9))
    assert reach(1.0) > reach(0.5)  # the fake's first pass alone would stop higher
    assert r.k == max(r.lower_bound, reach(0.5))
    assert r.fit.params.num_features == r.k and r.losses[r.k - 1] <= 1e-3
    # Switched off, the search keeps its first count.
    fake = _FakeFits(step_gain=1.0)
    monkeypatch.setattr(_count, "fit_batch", fake)
    off = required_features(tgt, 1e-3, k_max=20, polish=False)
    assert off.k == max(off.lower_bound, reach(1.0)) and {c[4] for c in fake.calls} == {200}
    with pytest.raises(ValueError, match="polish"):
        required_features(tgt, 1e-3, polish=1)


def test_required_features_second_try_reaches_the_bound():
    # The example: quick-mode settings alone stop at 5 for oscillating(1) at 1e-3; the
    # second try at 4 (the certified bound) reaches it, which settles the count.
    tgt = jaxfeat.targets.oscillating(1, n=128)
    quick = dict(restarts=4, max_steps=100, k_max=8)
    first = required_features(tgt, 1e-3, polish=False, **quick)
    second = required_features(tgt, 1e-3, **quick)
    assert first.k == 5 and first.lower_bound == 4
    assert second.k == second.lower_bound == 4 and second.fit.mean_kl <= 1e-3


def test_required_features_raises_the_bound_with_the_continuity_bound(monkeypatch):
    # A stand-in continuity bound certifies the two counts above the segmentation bound's: the
    # bracket's lower end rises by two, in a bisection of the bracket (upper half first) that
    # needs fewer tries than climbing one count at a time.
    monkeypatch.setattr(_count, "fit_batch", _FakeFits())
    monkeypatch.setattr(_count, "_CONTINUITY_REACH", 0.0)
    tgt = jaxfeat.targets.oscillating(1, n=24)
    off = required_features(tgt, 1e-3, k_max=20, continuity=False)
    seg = off.lower_bound
    assert off.segmentation_bound == seg and off.k >= seg + 3
    calls = []

    def fake_bound(target, k, *, tol):
        calls.append((k, tol))
        return SimpleNamespace(bound=2 * tol if k < seg + 2 else 0.5 * tol)

    monkeypatch.setattr(_count, "continuity_lower_bound", fake_bound)
    r = required_features(tgt, 1e-3, k_max=20)
    assert r.segmentation_bound == seg and r.lower_bound == seg + 2 and r.k == off.k
    tried = [c[0] for c in calls]
    assert {c[1] for c in calls} == {1e-3} and tried[0] == (seg + off.k) // 2
    assert len(tried) <= np.ceil(np.log2(off.k - seg + 1)) and len(tried) < 3 and seg + 2 in tried
    # A certificate at K is one at every count below it.
    np.testing.assert_array_equal(r.bounds[seg - 1 : seg + 1], 2e-3)
    # For JumpReLU, whose features jump at their thresholds, the bound is not used.
    calls.clear()
    jump = required_features(tgt, 1e-3, k_max=20, activation="jumprelu")
    assert not calls and jump.lower_bound == jump.segmentation_bound
    with pytest.raises(ValueError, match="continuity"):
        required_features(tgt, 1e-3, continuity=1)


def test_required_features_softplus_has_no_certificate(monkeypatch):
    fake = _FakeFits()
    monkeypatch.setattr(_count, "fit_batch", fake)
    r = required_features(
        jaxfeat.targets.oscillating(1, n=24), 1e-2, k_max=8, activation="softplus"
    )
    assert r.lower_bound == 1 and np.all(r.bounds == 0) and r.activation == "softplus"
    assert r.k is not None and np.all(np.isnan(fake.calls[0][3]))


def test_required_features_bad_inputs():
    tgt = jaxfeat.targets.oscillating(1, n=24)
    for kwargs, match in [
        ({"tol": 0.0}, "tol"),
        ({"tol": -1.0}, "tol"),
        ({"tol": 1e-3, "k_max": 0}, "k_max"),
        ({"tol": 1e-3, "metric": "l2"}, "metric"),
        ({"tol": 1e-3, "activation": "gelu"}, "activation"),
    ]:
        with pytest.raises(ValueError, match=match):
            required_features(tgt, **kwargs)
    with pytest.raises(ValueError, match="grid"):
        required_features_batch([tgt, jaxfeat.targets.oscillating(1, n=25)], 1e-3)
    with pytest.raises(TypeError, match="restart"):  # a misspelt option, as anywhere in Python
        required_features_batch([tgt], 1e-3, restart=3)
    with pytest.raises(ValueError, match="empty"):
        required_features_batch([], 1e-3)


# ---------------------------------------------------------------------------------------------
# predicted_features


def test_predicted_features_scaling():
    tgt = jaxfeat.targets.oscillating(1)
    n = predicted_features(tgt, 1e-3)
    assert 3 < n < 7
    # Exactly tol^(-1/4).
    for f in (0.1, 1 / 16, 1e-3):
        assert predicted_features(tgt, 1e-3 * f) == pytest.approx(n * f**-0.25, rel=1e-12)
    # Roughly linear in the number of oscillations (the grid resolves them all).
    ns = np.array(
        [predicted_features(jaxfeat.targets.oscillating(m, n=1024), 1e-3) for m in (1, 2, 4, 8)]
    )
    np.testing.assert_allclose(ns / ns[0], [1, 2, 4, 8], rtol=0.05)


def test_predicted_features_straight_ray_needs_almost_none():
    # A straight logit ray has z'' = 0; float32 rounding of the target leaves a small floor.
    assert predicted_features(jaxfeat.targets.temperature(), 1e-3) < 0.05


def test_predicted_features_bad_inputs():
    tgt = jaxfeat.targets.oscillating(1, n=24)
    with pytest.raises(ValueError, match="tol"):
        predicted_features(tgt, 0.0)
    with pytest.raises(ValueError, match="3"):
        predicted_features(jaxfeat.targets.html_closing_tag(), 1e-3)
