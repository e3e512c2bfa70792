"""feature_family on a planted family: it finds exactly the planted features and their curve, the
same checks reject a wrong SAE, and the statistics match a direct NumPy computation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfeat import _family
from jaxfeat import sae as js

D_IN, D_SAE, V = 12, 24, 8
TOKENS = np.array([1, 3, 4, 6, 7])


@dataclasses.dataclass
class Planted:
    sae: js.SAE
    x: np.ndarray
    t: np.ndarray
    W_U: np.ndarray
    reference: np.ndarray  # (N, n) the true p(t) of each sample over TOKENS
    members: np.ndarray  # dictionary indices of the planted features
    moving_but_silent: int  # varies with t, but W_U cannot see it
    constant: int  # active on every sample, flat in t


def planted(
    seed: int = 0, n: int = 1500, noise: float = 0.01, vocab: int = V, tokens: np.ndarray = TOKENS
) -> Planted:
    """x(t) = Σ relu(w_i t + b_i) d_i + e + relu(t + 0.3) g + noise, with g in W_U's null space."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, n)
    w = np.array([2.0, -1.5, 3.0])
    b = np.array([0.5, 0.2, -1.0])
    acts = np.maximum(w * t[:, None] + b, 0)
    Q, _ = np.linalg.qr(rng.normal(size=(D_IN, D_IN)))
    D, e, g = Q[:, :3].T, Q[:, 3], Q[:, 4]
    W_U = rng.normal(size=(D_IN, vocab))
    W_U -= np.outer(g, g @ W_U)  # g moves no logit
    x = acts @ D + e + np.maximum(t + 0.3, 0)[:, None] * g + noise * rng.normal(size=(n, D_IN))
    spare = rng.normal(size=(D_SAE - 5, D_IN - 5)) @ Q[:, 5:].T  # orthogonal to the signal
    rows = np.concatenate([D, e[None], g[None], spare / np.linalg.norm(spare, axis=1)[:, None]])
    order = rng.permutation(D_SAE)
    W_dec = rows[order]
    where = np.argsort(order)  # dictionary index of each row of `rows`
    sae = js.SAE(
        jnp.asarray(W_dec.T, jnp.float32),
        jnp.zeros(D_SAE),
        jnp.asarray(W_dec, jnp.float32),
        jnp.zeros(D_IN),
    )
    logits = acts @ (D @ W_U)[:, tokens] + rng.normal(size=len(tokens))
    reference = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
    return Planted(sae, x, t, W_U, reference, np.sort(where[:3]), int(where[4]), int(where[3]))


@pytest.fixture(scope="module")
def case():
    return planted()


def run(case: Planted, sae: js.SAE | None = None, **options) -> js.FeatureFamily:
    """feature_family on the planted case with the tests' defaults (no count: it is slow)."""
    kwargs = dict(tokens=TOKENS, tol=1e-3, reference=case.reference, bins=24, count=False)
    kwargs.update(options)
    return js.feature_family(sae or case.sae, case.x, case.t, case.W_U, **kwargs)


@pytest.fixture(scope="module")
def family(case):
    return run(case)


def test_finds_exactly_the_planted_members(case, family):
    assert np.array_equal(np.sort(family.members), case.members)
    assert case.moving_but_silent not in family.members and case.constant not in family.members
    assert family.reference_source == "given" and family.search == "exhaustive"
    assert family.converged


def test_its_curve_matches_the_planted_one(case, family):
    assert family.kl < 1e-4, family.kl
    np.testing.assert_allclose(family.curve, family.reference, atol=5e-3)
    # All three are needed: the planted curve is within tol only with the whole family.
    assert np.array_equal(np.sort(family.subfamily), case.members)
    assert family.size_kl[2] > family.tol >= family.size_kl[3]


def test_the_same_checks_reject_a_wrong_sae(case):
    # Swap the decoder rows of two planted members: they still vary with t, but the curve they
    # make is wrong, and the match check above fails on it.
    i, j = case.members[:2]
    W_dec = np.asarray(case.sae.W_dec).copy()
    W_dec[[i, j]] = W_dec[[j, i]]
    wrong = dataclasses.replace(case.sae, W_dec=jnp.asarray(W_dec))
    fam = run(case, wrong)
    assert fam.kl > 1e-2 and fam.subfamily is None
    assert fam.converged  # the fit of c is an optimum even where the curve is wrong


def test_the_members_check_rejects_a_planted_member_left_out(case):
    # With a share floor above one member's share, the family is no longer the planted one.
    fam = run(case, min_share=0.2)
    assert not np.array_equal(np.sort(fam.members), case.members)


def test_statistics_match_a_direct_numpy_computation(case, family, monkeypatch):
    f = np.asarray(js.encode(case.sae, case.x), np.float64)
    index, grid, counts = _family._bins(case.t, 24)
    means = np.stack([f[index == b].mean(0) for b in range(grid.size)])
    within = sum(((f[index == b] - means[b]) ** 2).sum(0) for b in range(grid.size))
    between = counts @ (means - f.mean(0)) ** 2
    eta = between / (between + within)
    np.testing.assert_allclose(family.profiles, means[:, family.members], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(family.variation, eta[family.members], rtol=1e-4)
    np.testing.assert_array_equal(family.counts, counts)
    # Many small chunks (the pairwise merge) give the same statistics as one.
    monkeypatch.setattr(_family, "CHUNK_ELEMENTS", 100 * D_SAE)
    chunked = run(case)
    np.testing.assert_allclose(chunked.profiles, family.profiles, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(chunked.variation, family.variation, rtol=1e-4)


def test_shares_are_the_energy_decomposition(case, family):
    effects = np.asarray(js.logit_effects(case.sae, case.W_U, tokens=TOKENS), np.float64)
    f = np.asarray(js.encode(case.sae, case.x), np.float64)
    index = _family._bins(case.t, 24)[0]
    means = np.stack([f[index == b].mean(0) for b in range(index.max() + 1)])
    energy = ((means - means.mean(0)) ** 2).sum(0) * (
        (effects - effects.mean(1, keepdims=True)) ** 2
    ).sum(1)
    np.testing.assert_allclose(family.shares, (energy / energy.sum())[family.members], rtol=1e-3)
    assert np.all(np.diff(family.shares) <= 0)
    assert family.shares.sum() > 0.99  # the planted members carry the variation


def test_greedy_search_is_an_upper_bound_on_the_exhaustive_one(case, family, monkeypatch):
    monkeypatch.setattr(_family, "EXHAUSTIVE_MAX", 0)
    greedy = run(case)
    assert greedy.search == "greedy"
    assert np.all(greedy.size_kl >= family.size_kl - 1e-7)
    np.testing.assert_allclose(
        greedy.size_kl[[0, -1]], family.size_kl[[0, -1]], rtol=1e-4, atol=1e-7
    )


def _fake_fit(contributions: np.ndarray, goal: np.ndarray):
    """A stand-in for the offset fit: the loss of a mask is |sum of its contributions - goal|^2."""

    def fit(masks, reference):
        losses = ((np.asarray(masks, float) @ contributions - goal) ** 2).sum(axis=1)
        return np.zeros(len(losses)), losses, np.zeros(len(losses))

    return fit


def test_greedy_search_takes_cancelling_pairs_together():
    # A and B cancel each other's large part and together give the goal h; C gives half of h;
    # twelve small features are noise. Forward selection takes C and the noise first and never
    # sees A + B; the share-ordered prefix {A, B} is exact.
    g, h = np.eye(16)[0], np.eye(16)[1]
    noise = 0.01 * np.eye(16)[2:14]
    contributions = np.concatenate([[5 * g, h - 5 * g, 0.5 * h], noise])
    fit = _fake_fit(contributions, h)
    size_kl, best, search = _family._search(fit, np.zeros((4, 3)), len(contributions))
    assert search == "greedy"
    assert size_kl[2] == 0.0 and best[2].tolist() == [0, 1]
    # Each size's best subset is the one its loss belongs to, and no size is worse than the
    # pure forward selection.
    for s, members in enumerate(best):
        mask = np.zeros((1, len(contributions)), bool)
        mask[0, members] = True
        assert len(members) == s and fit(mask, None)[1][0] == pytest.approx(size_kl[s])
    # The same check rejects forward selection alone: no size gets below |h/2|^2 = 0.25.
    m, chosen, forward = len(contributions), [], []
    for _ in range(m):
        rest = [j for j in range(m) if j not in chosen]
        masks = np.zeros((len(rest), m), bool)
        masks[:, chosen] = True
        masks[np.arange(len(rest)), rest] = True
        losses = fit(masks, None)[1]
        chosen.append(rest[int(np.argmin(losses))])
        forward.append(losses.min())
    assert min(forward) > 0.2 and chosen[0] == 2


def test_default_reference_is_the_activations_through_the_unembedding(case):
    fam = run(case, reference=None)
    assert fam.reference_source == "activations"
    index = _family._bins(case.t, 24)[0]
    p = np.asarray(jax.nn.softmax(case.x @ case.W_U[:, TOKENS], axis=-1))
    expect = np.stack([p[index == b].mean(0) for b in range(index.max() + 1)])
    np.testing.assert_allclose(fam.reference, expect, rtol=1e-4, atol=1e-6)
    assert fam.kl < 1e-3


def test_full_vocabulary_reference_is_restricted_to_tokens(case, family):
    full = np.full((case.t.size, V), 1e-3)
    full[:, TOKENS] = case.reference * (1 - 1e-3 * (V - TOKENS.size))
    fam = run(case, reference=full)
    np.testing.assert_allclose(fam.reference, family.reference, rtol=1e-5)


def test_discrete_latent_values_are_the_grid(case):
    levels = np.linspace(-1, 1, 9)
    t = levels[np.random.default_rng(3).integers(0, 9, case.t.size)]
    fam = js.feature_family(case.sae, case.x, t, case.W_U, tokens=TOKENS, tol=1.0, count=False)
    np.testing.assert_allclose(fam.grid, levels)
    assert fam.counts.sum() == case.t.size


def test_unreachable_tolerance_reports_no_subfamily(case, family):
    fam = run(case, tol=1e-12)
    assert fam.subfamily is None and fam.subfamily_kl == fam.kl


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=np.zeros((10, D_IN + 1))), r"x has shape \(10, 13\)"),
        (dict(W_U=np.zeros((V, D_IN))), r"W_U has shape \(8, 12\)"),
        (dict(t=np.zeros(1500)), "fewer than 2 distinct values"),
        (dict(t=np.zeros(7)), r"t has shape \(7,\)"),
        (dict(tokens=[1, V]), r"tokens \[8\] are out of range"),
        (dict(reference=np.ones((1500, 3))), r"reference has shape \(1500, 3\)"),
        (dict(min_share=1.5), r"min_share=1.5 must lie in \[0, 1\]"),
        (dict(tol=0.0), "tol=0.0 must be a finite number > 0"),
        (dict(bins=1), "bins=1 must be at least 2"),
    ],
)
def test_bad_input_is_a_clear_error(case, change, match):
    args = dict(x=case.x, t=case.t, W_U=case.W_U, tokens=TOKENS, tol=1e-3, count=False)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        js.feature_family(case.sae, args.pop("x"), args.pop("t"), args.pop("W_U"), **args)


def test_nan_activations_name_the_row(case):
    x = case.x.copy()
    x[17, 2] = np.nan
    with pytest.raises(ValueError, match="the first at row 17"):
        js.feature_family(case.sae, x, case.t, case.W_U, tokens=TOKENS, tol=1e-3, count=False)


def test_plot_family_draws_three_labelled_panels(family):
    fig = js.plot_family(family, token_names=list("abcde"), latent_name="latent t (a.u.)")
    axes = fig.axes
    assert len(axes) == 3
    for ax in axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert axes[0].get_xlabel() == "latent t (a.u.)"
    assert len(axes[0].lines) == family.members.size
    # One legend for the features (their colours are shared by the panels), named by index.
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"feature {i}" for i in family.members]
    titled = js.plot_family(family, title="my model")
    assert titled.get_suptitle().startswith("my model: feature family of")
    # A family larger than the colour cycle (SAEs tile) still draws, one colour per member.
    many = dataclasses.replace(
        family,
        members=np.arange(12),
        profiles=np.tile(family.profiles[:, :1], 12),
        effects=np.tile(family.effects[:1], (12, 1)),
    )
    colours = [line.get_color() for line in js.plot_family(many).axes[0].lines]
    assert len({tuple(np.atleast_1d(c)) if not isinstance(c, str) else c for c in colours}) == 12
    with pytest.raises(ValueError, match="token_names has 2 names"):
        js.plot_family(family, token_names=["a", "b"])
    with pytest.raises(ValueError, match="pair="):
        js.plot_family(family, pair=(0, 0))


def test_pure_noise_is_not_a_member_however_many_bins(monkeypatch):
    # Sixty latent values, a hundred samples, activations independent of t: plain η² averages
    # (T - 1) / (N - 1) = 0.6 and would admit every feature; the corrected ratio does not.
    rng = np.random.default_rng(5)
    t = rng.integers(0, 60, 100).astype(float)
    x = rng.uniform(0.5, 1.5, (100, 4))
    sae = js.SAE(jnp.eye(4), jnp.zeros(4), jnp.eye(4), jnp.zeros(4))
    W_U = rng.normal(size=(4, 3))
    fam = js.feature_family(sae, x, t, W_U, tokens=[0, 1, 2], tol=1e-3, count=False)
    assert fam.members.size == 0
    index, grid, counts = _family._bins(t, None)
    means = np.stack([x[index == b].mean(0) for b in range(grid.size)])
    within = _m2(x, index).sum(0)
    between = counts @ (means - x.mean(0)) ** 2
    assert np.all(between / (between + within) > 0.2)  # the uncorrected check fails here
    assert np.all(_family._epsilon_squared(means, _m2(x, index), counts) < 0.2)


def _m2(x, index):
    """(T, d) within-bin sums of squared deviations."""
    return np.stack(
        [((x[index == b] - x[index == b].mean(0)) ** 2).sum(0) for b in range(index.max() + 1)]
    )


def test_float32_sums_stay_accurate_for_large_offsets():
    # Activations 1000 +- 1: a naive float32 sum of squares would lose the variance.
    rng = np.random.default_rng(6)
    n = 40_000
    t = rng.integers(0, 4, n).astype(float)
    x = (1000.0 + t + rng.normal(size=n))[:, None].astype(np.float32)
    sae = js.SAE(jnp.ones((1, 1)), jnp.zeros(1), jnp.ones((1, 1)), jnp.zeros(1))
    index, grid, _ = _family._bins(t, None)
    means, m2, _, _ = _family._binned_stats(sae, x, index, grid.size, jnp.ones((1, 2)), None, None)
    x64 = x[:, 0].astype(np.float64)
    for b in range(grid.size):
        np.testing.assert_allclose(means[b, 0], x64[index == b].mean(), rtol=1e-7)
        np.testing.assert_allclose(
            m2[b, 0], ((x64[index == b] - x64[index == b].mean()) ** 2).sum(), rtol=1e-3
        )


def test_an_outlier_in_t_does_not_empty_the_family(case):
    t = case.t.copy()
    t[0] = 1000.0
    fam = js.feature_family(
        case.sae,
        case.x,
        t,
        case.W_U,
        tokens=TOKENS,
        tol=1e-3,
        reference=case.reference,
        count=False,
    )
    assert fam.grid.size == _family.DEFAULT_BINS
    assert np.array_equal(np.sort(fam.members), case.members)


def test_bins_float32_cannot_separate_are_a_clear_error():
    with pytest.raises(ValueError, match="closer than float32 can tell apart"):
        _family._bins(np.array([0.0, 1.0 - 1e-9, 1.0]), None)


def test_reference_row_without_mass_on_tokens_names_the_row(case):
    ref = case.reference.copy()
    ref[11] = 0.0
    with pytest.raises(ValueError, match="reference row 11 has no probability on tokens"):
        run(case, reference=ref)
