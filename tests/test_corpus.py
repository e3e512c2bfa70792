"""make_corpus: the layout, the cue's next tokens drawn from p(t), the background, the errors."""

from __future__ import annotations

import numpy as np
import pytest

import jaxfeat
from jaxfeat import toy
from jaxfeat._corpus import TAG_NEXT

TARGET = jaxfeat.targets.temperature(nonmonotone=True, n=4)


@pytest.fixture(scope="module")
def corpus():
    return toy.make_corpus(TARGET, n_docs=40_000, seed=1)


def _frequency_check(corpus, probs) -> float:
    """Largest z-score of the cue's next-token frequencies against ``probs`` (T, V)."""
    worst = 0.0
    for level in range(corpus.target.num_points):
        nxt = corpus.tokens[corpus.level == level, -1]
        freq = np.bincount(nxt, minlength=corpus.target.vocab) / nxt.size
        sd = np.sqrt(probs[level] * (1 - probs[level]) / nxt.size) + 1e-12
        worst = max(worst, float(np.max(np.abs(freq - probs[level]) / sd)))
    return worst


def test_next_tokens_follow_the_target(corpus):
    assert _frequency_check(corpus, np.asarray(TARGET.probs, np.float64)) < 5.0
    # The same check rejects a different curve.
    other = np.asarray(jaxfeat.targets.temperature(n=4).probs, np.float64)
    assert _frequency_check(corpus, other) > 10.0


def test_counts_are_the_next_tokens_at_the_cue(corpus):
    counts = corpus.counts()
    assert counts.shape == (TARGET.num_points, TARGET.vocab)
    np.testing.assert_array_equal(
        counts.sum(1), np.bincount(corpus.level, minlength=TARGET.num_points)
    )
    level = 3
    nxt = corpus.tokens[corpus.level == level, corpus.cue_position + 1]
    np.testing.assert_array_equal(counts[level], np.bincount(nxt, minlength=TARGET.vocab))


def test_layout_and_latent_input(corpus):
    V = TARGET.vocab
    assert corpus.tokens.shape == (40_000, 12) and corpus.tokens.dtype == np.int32
    assert np.all(corpus.tokens[:, -2] == corpus.cue[corpus.level])
    assert np.all(corpus.tokens[:, -1] < V)
    background = corpus.tokens[:, :-2]
    assert np.all(background >= V + 1) and np.all(background < corpus.vocab)
    latent = corpus.latent_input()
    np.testing.assert_allclose(latent[:, -2], corpus.scaled(np.asarray(TARGET.t)[corpus.level]))
    assert np.all(latent[:, :-2] == 0) and latent[:, -2].min() == -1 and latent[:, -2].max() == 1


def test_tag_context_is_a_fixed_distribution(corpus):
    background = corpus.tokens[:, :-2]
    after = background[:, 1:][background[:, :-1] == corpus.tag]
    assert after.size > 1000
    freq = np.array([(after == i).mean() for i in corpus.tag_next])
    np.testing.assert_allclose(freq, TAG_NEXT, atol=0.02)


def test_token_presentation_has_one_cue_per_grid_point():
    corpus = toy.make_corpus(TARGET, latent="token", n_docs=200, seed=0)
    assert np.unique(corpus.cue).size == TARGET.num_points
    assert np.all(corpus.tokens[:, -2] == corpus.cue[corpus.level])
    assert np.all(corpus.latent_input() == 0)


def test_a_corpus_is_a_function_of_its_seed():
    a, b = (toy.make_corpus(TARGET, n_docs=50, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, toy.make_corpus(TARGET, n_docs=50, seed=4).tokens)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(latent="onehot"), "latent='onehot' is unknown"),
        (dict(seq_len=3), "seq_len=3 must be at least 4"),
        (dict(n_docs=0), "n_docs=0 must be at least 1"),
        (dict(n_filler=1), "n_filler=1 must be at least 2"),
        (dict(tag_rate=1.0), r"tag_rate=1.0 must lie in \[0, 1\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy.make_corpus(TARGET, **kwargs)
