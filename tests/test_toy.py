"""Toy models: the exactness theorem (an attention-free one-layer model is a d_mlp + 1 feature
model), training against the certified bound, weights on disk, and SAEs trained on the MLP."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfeat
from jaxfeat import toy
from tests.helpers import numpy_kl

TARGET = jaxfeat.targets.temperature(nonmonotone=True, n=16)


@pytest.fixture(scope="module")
def corpus():
    return toy.make_corpus(TARGET, n_docs=4096, seed=0)


def untrained(corpus, *, seed: int = 0, **options) -> toy.ToyModel:
    """A model with random weights: the theorem holds for any weights, trained or not."""
    fields = (
        dict(
            d_model=32,
            d_mlp=6,
            n_layers=1,
            n_heads=2,
            attention=False,
            layernorm=False,
            activation="relu",
        )
        | options
    )
    config = toy.ToyConfig(corpus.vocab, corpus.seq_len, **fields)
    params = toy.init_params(config, jax.random.key(seed))
    return toy.ToyModel(params, config, corpus, losses=np.zeros(0), converged=False)


def _features_curve(model: toy.ToyModel) -> np.ndarray:
    s = model.corpus.scaled(np.asarray(TARGET.t))
    return np.asarray(jaxfeat.probs(model.as_features(), jnp.asarray(s, jnp.float32)), np.float64)


def test_attention_free_model_is_exactly_d_mlp_plus_one_features(corpus):
    model = untrained(corpus, d_mlp=6)
    features = model.as_features()
    assert features.num_features == 7
    # Without attention the background cannot reach the cue: one context is the curve.
    np.testing.assert_allclose(_features_curve(model), model.curve(n_contexts=2), atol=2e-6)


def test_the_exactness_check_rejects_a_model_outside_the_class(corpus):
    # A final LayerNorm leaves the class: the same check, applied to the features of the model
    # with its LayerNorm ignored, fails; as_features itself refuses such a model.
    model = untrained(corpus, d_mlp=6, layernorm=True, seed=1)
    params = dict(model.params, ln_g=jnp.full_like(model.params["ln_g"], 3.0))
    model = dataclasses.replace(model, params=params)
    with pytest.raises(ValueError, match="without attention or LayerNorm"):
        model.as_features()
    pretend = dataclasses.replace(model, config=model.config._replace(layernorm=False))
    assert np.abs(_features_curve(pretend) - model.curve(n_contexts=2)).max() > 1e-2


@pytest.fixture(scope="module")
def trained(corpus):
    return toy.train(corpus, d_mlp=2, attention=False, steps=600, progress=False)


@pytest.fixture(scope="module")
def bound3():
    return jaxfeat.segmentation_lower_bound(TARGET, 3).bounds[2]


def test_training_never_beats_the_certified_bound(trained, bound3):
    assert trained.config.d_mlp + 1 == 3
    loss = float(numpy_kl(TARGET.probs, trained.curve(n_contexts=1)).mean())
    assert loss >= bound3 - 1e-6, (loss, bound3)
    assert trained.losses[-100:].mean() < trained.losses[:10].mean()  # it did train
    # jaxfeat's own fit with the same number of features is at least as good as training.
    assert jaxfeat.fit(TARGET, k=3, restarts=4).mean_kl <= loss + 1e-6


def test_the_bound_check_rejects_a_model_outside_the_class(bound3):
    # The same comparison fails for a curve no 3-feature model makes: the target itself
    # (mean KL 0), which needs more features than that.
    assert bound3 > 0 and float(numpy_kl(TARGET.probs, TARGET.probs).mean()) < bound3 - 1e-6


def test_curve_outside_mass_and_samples(trained):
    curve = trained.curve()
    assert curve.shape == (16, 3)
    np.testing.assert_allclose(curve.sum(1), 1.0, atol=1e-6)
    outside = trained.outside_mass()
    assert outside.shape == (16,) and np.all((outside >= 0) & (outside < 0.5))
    samples = trained.mlp_out(64, seed=1)
    assert samples["x"].shape == (64, 32) and samples["t"].shape == (64,)
    np.testing.assert_allclose(samples["probs"].sum(1), 1.0, atol=1e-5)
    logits = samples["resid"] @ samples["W_U"] + np.asarray(trained.params["b_U"])
    np.testing.assert_allclose(jax.nn.softmax(logits, -1), samples["probs"], atol=1e-5)


def test_weights_round_trip(tmp_path, trained):
    trained.save(tmp_path)
    params, config = toy.load_params(tmp_path)
    assert config == trained.config
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    loaded = toy.load_model(tmp_path, trained.corpus)
    np.testing.assert_array_equal(loaded.losses, trained.losses)
    assert loaded.converged == trained.converged
    np.testing.assert_array_equal(loaded.curve(n_contexts=2), trained.curve(n_contexts=2))
    other = toy.make_corpus(jaxfeat.targets.tuning_curves(8, n=8, width=0.15), n_docs=8)
    with pytest.raises(ValueError, match="pass the corpus the model was trained on"):
        toy.load_model(tmp_path, other)
    reseeded = toy.make_corpus(TARGET, n_docs=trained.corpus.tokens.shape[0], seed=1)
    with pytest.raises(ValueError, match="not the one the model was trained on"):
        toy.load_model(tmp_path, reseeded)
    (tmp_path / "config.json").write_text(
        (tmp_path / "config.json").read_text().replace('"n_layers": 1', '"n_layers": 2')
    )
    with pytest.raises(ValueError, match="do not match config.json"):
        toy.load_params(tmp_path)


def test_attention_and_two_layers_train(corpus):
    model = toy.train(corpus, d_mlp=4, n_layers=2, attention=True, steps=5, progress=False)
    assert np.all(np.isfinite(model.losses)) and model.curve().shape == (16, 3)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_train_sae_reconstructs(architecture):
    rng = np.random.default_rng(0)
    codes = np.maximum(rng.normal(size=(4096, 6)) - 0.5, 0)
    acts = codes @ rng.normal(size=(6, 10))
    sae = toy.train_sae(acts, d_sae=12, architecture=architecture, k=3, steps=800)
    assert sae.architecture == architecture and sae.d_in == 10 and sae.d_sae == 12
    f = np.asarray(jaxfeat.sae.encode(sae, acts))
    recon = np.asarray(jaxfeat.sae.decode(sae, f))
    assert np.mean((recon - acts) ** 2) < 0.2 * np.mean((acts - acts.mean(0)) ** 2)
    if architecture == "topk":
        assert np.all((f > 0).sum(1) <= 3)


def test_bad_arguments(corpus):
    with pytest.raises(ValueError, match="d_mlp=0"):
        toy.train(corpus, d_mlp=0)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        toy.train(corpus, d_mlp=2, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="architecture='gated'"):
        toy.train_sae(np.zeros((8, 4)), d_sae=4, architecture="gated")


def test_samples_have_fresh_backgrounds(corpus):
    # With attention the cue reads its background: samples at one latent value must differ, or
    # an SAE trained on them would see only one point per grid value.
    samples = untrained(corpus, attention=True).mlp_out(64, seed=2)
    levels = np.unique(samples["t"]).size
    assert np.unique(samples["resid"].round(5), axis=0).shape[0] > levels
