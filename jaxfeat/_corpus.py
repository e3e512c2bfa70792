"""Text generated from a known latent: the training data of the toy models.

Each document is background text followed by one cue whose next token is drawn from p(t):

- filler: a random Markov chain over ``n_filler`` tokens (something else to learn);
- tags: the seed's ``</p>`` context, a binary feature: after the tag token the next token is one
  of three in fixed ratios;
- the cue at position ``L - 2`` and its next token, drawn from the target's p(t), at ``L - 1``.

With ``latent="linear"`` the cue is one token and the model's input there is ``e_cue + s(t) u``
(the latent linearly represented, the seed's assumption about earlier layers; ``s`` maps the
grid affinely onto [-1, 1]). With ``latent="token"`` the cue is one of T tokens, one per grid
point, with free embeddings.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _validate
from ._target import Target

PRESENTATIONS = ("linear", "token")
# The tag context's next-token ratios (the seed's </p> example: a fixed distribution).
TAG_NEXT = (0.6, 0.3, 0.1)


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """Token sequences driven by a latent, from :func:`make_corpus`.

    Token ids: ``0..V-1`` the target's tokens, then the cue (``"linear"``) or the T latent cue
    tokens (``"token"``), the tag, its three next tokens, and the filler tokens.

    Attributes:
      tokens: (n_docs, L) int32 token ids.
      level: (n_docs,) index into ``target.t`` of each document's latent value.
      target: the :class:`jaxfeat.Target` the cue's next token is drawn from.
      latent: ``"linear"`` or ``"token"``.
      vocab: the total number of token ids.
      cue: (T,) the cue token id at each grid point (all equal for ``"linear"``).
      tag: the tag token id; ``tag_next``: (3,) the ids that may follow it.
      filler: (n_filler,) filler token ids; ``transition``: (n_filler, n_filler) their chain.
      tag_rate: probability that a background position starts a tag context.
    """

    tokens: np.ndarray
    level: np.ndarray
    target: Target
    latent: str
    vocab: int
    cue: np.ndarray
    tag: int
    tag_next: np.ndarray
    filler: np.ndarray
    transition: np.ndarray
    tag_rate: float

    @property
    def seq_len(self) -> int:
        """L, the document length."""
        return self.tokens.shape[1]

    @property
    def cue_position(self) -> int:
        """The position whose next-token prediction is p(t)."""
        return self.seq_len - 2

    def scaled(self, t: np.ndarray) -> np.ndarray:
        """The latent as the model reads it: the grid mapped affinely onto [-1, 1]."""
        lo, hi = float(self.target.t[0]), float(self.target.t[-1])
        return 2.0 * (np.asarray(t, np.float64) - lo) / (hi - lo) - 1.0

    def latent_input(self, level: np.ndarray | None = None) -> np.ndarray:
        """(n, L) float32 added along the latent direction: ``s(t)`` at the cue for ``"linear"``,
        zeros for ``"token"`` (the cue token carries t there)."""
        level = self.level if level is None else np.asarray(level)
        out = np.zeros((level.size, self.seq_len), np.float32)
        if self.latent == "linear":
            out[:, self.cue_position] = self.scaled(np.asarray(self.target.t)[level])
        return out

    def counts(self) -> np.ndarray:
        """(T, V) how often each of the target's tokens follows the cue at each grid point: the
        training data's own curve (``jaxfeat.Target.from_counts(target.t, corpus.counts())``),
        which is all a model trained on this corpus sees of p(t).

        Example:
          >>> import jaxfeat
          >>> c = make_corpus(jaxfeat.targets.temperature(n=4), n_docs=100)
          >>> int(c.counts().sum())
          100
        """
        T, V = self.target.num_points, self.target.vocab
        nxt = self.tokens[:, self.cue_position + 1].astype(np.int64)
        out = np.zeros((T, V), np.int64)
        np.add.at(out, (self.level, nxt), 1)
        return out

    def contexts(self, n: int, seed: int) -> np.ndarray:
        """(n, L) fresh documents' background (positions before the cue are filled; the cue and
        its next token are left for the caller)."""
        return _background(np.random.default_rng(seed), n, self.seq_len, self)


def make_corpus(
    target: Target,
    *,
    latent: str = "linear",
    n_docs: int = 20_000,
    seq_len: int = 12,
    n_filler: int = 12,
    tag_rate: float = 0.15,
    seed: int = 0,
) -> Corpus:
    """Documents whose cue is followed by a token drawn from the target's p(t).

    Args:
      target: the curve; each document's t is a uniformly drawn grid point.
      latent: ``"linear"`` (input ``e_cue + s(t) u``) or ``"token"`` (one cue token per grid
        point).
      n_docs: number of documents.
      seq_len: tokens per document, L >= 4 (background, cue, next token).
      n_filler: filler tokens of the background Markov chain (>= 2).
      tag_rate: probability that a background position starts a tag context, in [0, 1).
      seed: integer seed; the corpus is a pure function of its arguments.

    Returns:
      :class:`Corpus`.

    Example:
      >>> import jaxfeat
      >>> corpus = make_corpus(jaxfeat.targets.temperature(), n_docs=100, seed=0)
      >>> corpus.tokens.shape, corpus.vocab
      ((100, 12), 20)
    """
    _validate.target(target)
    if latent not in PRESENTATIONS:
        raise ValueError(f"latent={latent!r} is unknown; use one of {PRESENTATIONS}.")
    n_docs = _validate.positive_int(n_docs, "n_docs")
    if _validate.positive_int(seq_len, "seq_len") < 4:
        raise ValueError(f"seq_len={seq_len} must be at least 4: background, cue, next token.")
    if _validate.positive_int(n_filler, "n_filler") < 2:
        raise ValueError(f"n_filler={n_filler} must be at least 2.")
    if not 0.0 <= _validate.nonnegative_float(tag_rate, "tag_rate") < 1.0:
        raise ValueError(f"tag_rate={tag_rate} must lie in [0, 1).")
    rng = np.random.default_rng(seed)
    V, T = target.vocab, target.num_points
    n_cue = T if latent == "token" else 1
    cue = V + (np.arange(T) if latent == "token" else np.zeros(T, int))
    tag = V + n_cue
    tag_next = tag + 1 + np.arange(3)
    filler = tag + 4 + np.arange(n_filler)
    # A sparse-ish random chain: each filler token has a few likely successors.
    transition = rng.dirichlet(np.full(n_filler, 0.3), size=n_filler)
    spec = dict(tag=int(tag), tag_next=tag_next, filler=filler, transition=transition)
    spec["tag_rate"] = float(tag_rate)
    corpus = Corpus(
        tokens=np.zeros((n_docs, seq_len), np.int32),
        level=rng.integers(0, T, n_docs),
        target=target,
        latent=latent,
        vocab=int(filler[-1] + 1),
        cue=cue,
        **spec,
    )
    tokens = _background(rng, n_docs, seq_len, corpus)
    tokens[:, -2] = cue[corpus.level]
    p = np.asarray(target.probs, np.float64)[corpus.level]
    cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    tokens[:, -1] = (rng.random((n_docs, 1)) > cumulative).sum(axis=1).clip(0, V - 1)
    object.__setattr__(corpus, "tokens", tokens)
    return corpus


def _background(rng, n: int, seq_len: int, corpus: Corpus) -> np.ndarray:
    tokens = np.zeros((n, seq_len), np.int32)
    state = rng.integers(0, corpus.filler.size, n)
    cum = np.cumsum(corpus.transition, axis=1)
    tag_cum = np.cumsum(TAG_NEXT)
    after_tag = np.zeros(n, bool)
    for pos in range(seq_len - 2):
        step = (rng.random((n, 1)) > cum[state]).sum(axis=1).clip(0, corpus.filler.size - 1)
        start_tag = (rng.random(n) < corpus.tag_rate) & ~after_tag & (pos < seq_len - 3)
        # The chain waits while a tag and its next token are written: the filler stays Markov.
        state = np.where(start_tag | after_tag, state, step)
        token = corpus.filler[state]
        token = np.where(start_tag, corpus.tag, token)
        follow = (rng.random((n, 1)) > tag_cum).sum(axis=1).clip(0, 2)
        token = np.where(after_tag, corpus.tag_next[follow], token)
        tokens[:, pos] = token
        after_tag = start_tag
    return tokens
