"""Small transformers trained on a latent-driven corpus, and SAEs trained on their MLP outputs.

A model is a dict of weights plus pure functions (:func:`apply`), trained by one jitted AdamW
step under ``lax.scan``. With no attention, no LayerNorm and the linear latent, a one-layer
model's logits at the cue are exactly a linear-logit model of t with one ReLU feature per neuron
plus the direct path (:meth:`ToyModel.as_features`), so training can never beat the certified
bound for ``d_mlp + 1`` features.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy
from tqdm.auto import tqdm

from . import _validate
from ._corpus import Corpus
from ._io import atomic_write
from ._model import Features
from ._sae import SAE, encode

Params = dict[str, Any]


class ToyConfig(NamedTuple):
    """The static shape of a toy model (hashable: it is a static argument of the jitted step)."""

    vocab: int
    seq_len: int
    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    attention: bool
    layernorm: bool
    activation: str


def init_params(config: ToyConfig, key: jax.Array) -> Params:
    """Random weights (scaled normal) for ``config``; the latent direction ``u`` is learned."""
    d, m = config.d_model, config.d_mlp
    keys = iter(jax.random.split(key, 4 + 6 * config.n_layers))
    normal = lambda shape, fan_in: jax.random.normal(next(keys), shape) / np.sqrt(fan_in)
    params: Params = {
        "W_E": normal((config.vocab, d), 1.0) * 0.5,
        "W_pos": normal((config.seq_len, d), 1.0) * 0.1,
        "u": normal((d,), 1.0),
        "W_U": normal((d, config.vocab), d),
        "b_U": jnp.zeros(config.vocab),
        "layers": [],
    }
    for _ in range(config.n_layers):
        layer = {
            "W_in": normal((d, m), d),
            "b_in": jnp.zeros(m),
            "W_out": normal((m, d), m),
            "b_out": jnp.zeros(d),
        }
        if config.attention:
            layer |= {n: normal((d, d), d) for n in ("W_Q", "W_K", "W_V", "W_O")}
        params["layers"].append(layer)
    if config.layernorm:
        params["ln_g"] = jnp.ones(d)
        params["ln_b"] = jnp.zeros(d)
    return params


def _attention(layer: Params, x: jax.Array, n_heads: int) -> jax.Array:
    L, d = x.shape[-2:]
    split = lambda y: y.reshape(*y.shape[:-1], n_heads, d // n_heads).swapaxes(-2, -3)
    q, k, v = (split(x @ layer[n]) for n in ("W_Q", "W_K", "W_V"))
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(d // n_heads)
    causal = jnp.tril(jnp.ones((L, L), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
    heads = (weights @ v).swapaxes(-2, -3).reshape(*x.shape)
    return heads @ layer["W_O"]


def apply(
    params: Params, config: ToyConfig, tokens: jax.Array, latent: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The forward pass.

    Args:
      params: weights from :func:`init_params` or training.
      config: the model's :class:`ToyConfig`.
      tokens: (..., L) token ids.
      latent: (..., L) values added along the latent direction ``u`` (see
        :meth:`jaxfeat.toy.Corpus.latent_input`).

    Returns:
      ``(logits, mlp_out, resid)``: (..., L, vocab) logits, the last layer's MLP output and the
      final residual stream before the unembedding, both (..., L, d_model).
    """
    act = jax.nn.relu if config.activation == "relu" else jax.nn.gelu
    L = tokens.shape[-1]
    x = params["W_E"][tokens] + params["W_pos"][:L] + latent[..., None] * params["u"]
    mlp_out = jnp.zeros_like(x)
    for layer in params["layers"]:
        if config.attention:
            x = x + _attention(layer, x, config.n_heads)
        mlp_out = act(x @ layer["W_in"] + layer["b_in"]) @ layer["W_out"] + layer["b_out"]
        x = x + mlp_out
    resid = x
    if config.layernorm:
        centred = x - x.mean(-1, keepdims=True)
        x = centred / jnp.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5)
        x = x * params["ln_g"] + params["ln_b"]
    return x @ params["W_U"] + params["b_U"], mlp_out, resid


def _loss(params, config, tokens, latent):
    logits = apply(params, config, tokens[:, :-1], latent[:, :-1])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _adamw(learning_rate: float, weight_decay: float, total_steps: int):
    schedule = optax.cosine_decay_schedule(learning_rate, total_steps)
    return optax.adamw(schedule, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("config", "hyper", "steps", "batch"))
def _train_chunk(params, state, key, tokens, latent, *, config, hyper, steps, batch):
    # The optimiser is rebuilt from hashable hyperparameters, so that one compiled step serves
    # every model of the same shape.
    optimizer = _adamw(*hyper)

    def step(carry, key):
        params, state = carry
        rows = jax.random.randint(key, (batch,), 0, tokens.shape[0])
        loss, grads = jax.value_and_grad(_loss)(params, config, tokens[rows], latent[rows])
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
    return params, state, losses


@dataclasses.dataclass(frozen=True, eq=False)
class ToyModel:
    """A trained toy model and the corpus it was trained on.

    Attributes:
      params: the weights.
      config: the :class:`ToyConfig`.
      corpus: the training :class:`jaxfeat.toy.Corpus`.
      losses: (steps,) training loss per step (mean cross-entropy per token, nats).
      converged: whether the loss had levelled off while the learning rate was still large: the
        mean loss over steps 70-80% of the run is within 1% of that over steps 60-70% (the
        cosine schedule is then at 35% to 10% of its peak; at the end it is 0, and every loss
        levels off).
    """

    params: Params
    config: ToyConfig
    corpus: Corpus
    losses: np.ndarray
    converged: bool

    def _at_cue(self, level: np.ndarray, tokens: np.ndarray):
        """Logits, MLP output and residual at the cue for backgrounds ``tokens`` (..., L) with
        the cue of ``level`` (...,) put in."""
        corpus = self.corpus
        level = np.asarray(level)
        tokens = tokens.copy()
        tokens[..., corpus.cue_position] = corpus.cue[level]
        latent = corpus.latent_input(level.reshape(-1)).reshape(tokens.shape)
        logits, mlp_out, resid = _forward(self.params, self.config, tokens, latent)
        pos = corpus.cue_position
        return logits[..., pos, :], mlp_out[..., pos, :], resid[..., pos, :]

    def curve(self, *, n_contexts: int = 64, seed: int = 0) -> np.ndarray:
        """(T, V) the model's next-token distribution at the cue on the target's grid, over the
        target's tokens and conditioned on them, averaged over ``n_contexts`` fresh backgrounds.
        """
        probs = self._probs(n_contexts, seed)
        inside = probs[:, : self.corpus.target.vocab]
        return inside / inside.sum(axis=1, keepdims=True)

    def outside_mass(self, *, n_contexts: int = 64, seed: int = 0) -> np.ndarray:
        """(T,) the probability the model puts on tokens outside the target's at the cue."""
        return 1.0 - self._probs(n_contexts, seed)[:, : self.corpus.target.vocab].sum(axis=1)

    def _probs(self, n_contexts: int, seed: int) -> np.ndarray:
        # The same backgrounds at every grid point, so that the curve's differences are t's.
        T = self.corpus.target.num_points
        contexts = self.corpus.contexts(n_contexts, seed)
        tokens = np.broadcast_to(contexts, (T, *contexts.shape))
        levels = np.broadcast_to(np.arange(T)[:, None], (T, n_contexts))
        logits = self._at_cue(levels, np.ascontiguousarray(tokens))[0]
        return np.asarray(jax.nn.softmax(logits.astype(jnp.float32), -1).mean(1), np.float64)

    def mlp_out(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Samples at the cue for SAE training and :func:`jaxfeat.sae.feature_family`.

        Args:
          n: number of samples (latent values drawn uniformly from the grid, each with a fresh
            background).
          seed: integer seed.

        Returns:
          dict with ``x`` (n, d_model) the last layer's MLP output, ``resid`` (n, d_model) the
          final residual stream, ``t`` (n,) the latent values, ``probs`` (n, vocab) the model's
          next-token distribution, ``W_U`` (d_model, vocab) the unembedding.
        """
        rng = np.random.default_rng(seed)
        level = rng.integers(0, self.corpus.target.num_points, n)
        tokens = self.corpus.contexts(n, seed)  # a fresh background per sample
        logits, mlp, resid = (np.asarray(v) for v in self._at_cue(level, tokens))
        return {
            "x": mlp,
            "resid": resid,
            "t": np.asarray(self.corpus.target.t, np.float64)[level],
            "probs": np.asarray(jax.nn.softmax(logits, -1), np.float64),
            "W_U": np.asarray(self.params["W_U"]),
        }

    def as_features(self) -> Features:
        """The exact linear-logit model of a one-layer, attention-free, LayerNorm-free model with
        the linear latent: one ReLU feature per neuron plus the direct path, in the corpus's
        scaled latent ``s(t)`` and over the target's tokens (``d_mlp + 1`` features).

        At the cue, ``x(s) = e + s u`` with ``e = W_E[cue] + W_pos[cue]``, and the logits are
        ``(x + W_out relu(W_in x + b_in) + b_out) W_U + b_U``: neuron n is the feature
        ``w_n = u·W_in[:, n]``, ``b_n = e·W_in[:, n] + b_in[n]``, ``l_n = W_out[n] W_U``; the
        direct path ``s u W_U`` is one more feature whose knot (at s = -2) lies left of the grid.

        Raises:
          ValueError: for a model outside that class.
        """
        cfg, p, corpus = self.config, self.params, self.corpus
        if cfg.attention or cfg.layernorm or cfg.n_layers != 1 or cfg.activation != "relu":
            raise ValueError(
                "as_features needs a one-layer ReLU model without attention or LayerNorm; this "
                f"one has n_layers={cfg.n_layers}, attention={cfg.attention}, "
                f"layernorm={cfg.layernorm}, activation={cfg.activation!r}."
            )
        if corpus.latent != "linear":
            raise ValueError("as_features needs the linear latent (make_corpus(latent='linear')).")
        V = corpus.target.vocab
        layer = p["layers"][0]
        e = p["W_E"][corpus.cue[0]] + p["W_pos"][corpus.cue_position]
        W_U = p["W_U"][:, :V]
        knot = -2.0  # left of the scaled grid [-1, 1]: the direct path is affine there
        c = (e + layer["b_out"]) @ W_U + p["b_U"][:V] + knot * (p["u"] @ W_U)
        return Features.create(
            c=c,
            l=jnp.concatenate([layer["W_out"] @ W_U, (p["u"] @ W_U)[None]]),
            w=jnp.concatenate([p["u"] @ layer["W_in"], jnp.ones(1)]),
            b=jnp.concatenate([e @ layer["W_in"] + layer["b_in"], -knot * jnp.ones(1)]),
        )

    def save(self, path: str | Path) -> None:
        """Weights to ``weights.safetensors``, the config to ``config.json`` and the loss curve
        to ``training.json`` in ``path``, each written atomically. :func:`jaxfeat.toy.load_model`
        reads the model back (given its corpus), :func:`jaxfeat.toy.load_params` the weights.

        Example:
          >>> import tempfile, jaxfeat
          >>> from jaxfeat import toy
          >>> corpus = toy.make_corpus(jaxfeat.targets.temperature(n=4), n_docs=64)
          >>> model = toy.train(corpus, d_mlp=2, steps=2, progress=False)
          >>> with tempfile.TemporaryDirectory() as d:
          ...     model.save(d)
          ...     toy.load_model(d, corpus).config == model.config
          True
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        flat = {name: np.asarray(v) for name, v in _named_leaves(self.params)}
        config = json.dumps(self.config._asdict(), indent=2)
        training = json.dumps(
            {
                "converged": self.converged,
                # float32's shortest round-trip digits: exact, at half the file size.
                "losses": [float(str(np.float32(v))) for v in self.losses],
                "corpus_digest": _digest(self.corpus),
            }
        )
        atomic_write(
            path / "weights.safetensors", lambda tmp: safetensors.numpy.save_file(flat, tmp)
        )
        atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(config))
        atomic_write(path / "training.json", lambda tmp: Path(tmp).write_text(training))


_forward = jax.jit(apply, static_argnums=1)


def _named_leaves(params: Params) -> list[tuple[str, jax.Array]]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    name = lambda keys: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)
    return [(name(keys), leaf) for keys, leaf in leaves]


def load_params(path: str | Path) -> tuple[Params, ToyConfig]:
    """The weights and config saved by :meth:`ToyModel.save`.

    Raises:
      ValueError: naming the file, when the weights do not match the config.
    """
    path = Path(path)
    config = ToyConfig(**json.loads((path / "config.json").read_text()))
    flat = safetensors.numpy.load_file(path / "weights.safetensors")
    template = init_params(config, jax.random.key(0))
    names = [name for name, _ in _named_leaves(template)]
    missing = [n for n in names if n not in flat]
    unknown = sorted(set(flat) - set(names))
    if missing or unknown:
        raise ValueError(
            f"{path / 'weights.safetensors'}: the weights do not match config.json (missing "
            f"{missing[:5]}, unknown {unknown[:5]})."
        )
    leaves = [jnp.asarray(flat[n]) for n in names]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves), config


def _digest(corpus: Corpus) -> str:
    h = hashlib.sha256()
    for part in (corpus.tokens, corpus.level, np.asarray(corpus.target.probs, np.float64)):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update(corpus.latent.encode())
    return h.hexdigest()


def load_model(path: str | Path, corpus: Corpus) -> ToyModel:
    """The :class:`ToyModel` saved by :meth:`ToyModel.save`, with the corpus it was trained on
    (rebuild it with :func:`jaxfeat.toy.make_corpus` and the same arguments: corpora are
    reproducible from their seed).

    Without ``training.json`` (weights saved elsewhere), ``losses`` is empty and ``converged``
    False.

    Raises:
      ValueError: naming the file, when the weights do not match the config, the corpus's
        vocabulary or sequence length differ from the model's, or ``corpus`` is not the one the
        model was trained on (``training.json`` keeps a digest of its documents, latent values
        and target).
    """
    path = Path(path)
    params, config = load_params(path)
    if (config.vocab, config.seq_len) != (corpus.vocab, corpus.seq_len):
        raise ValueError(
            f"{path / 'config.json'}: the model has vocab={config.vocab}, seq_len="
            f"{config.seq_len}, but corpus has vocab={corpus.vocab}, seq_len={corpus.seq_len}; "
            "pass the corpus the model was trained on."
        )
    training = path / "training.json"
    record = json.loads(training.read_text()) if training.exists() else {}
    if record.get("corpus_digest", _digest(corpus)) != _digest(corpus):
        raise ValueError(
            f"{training}: corpus is not the one the model was trained on (its documents, latent "
            "values or target differ); rebuild it with make_corpus and the same arguments."
        )
    losses = np.asarray(record.get("losses", []), np.float32)
    return ToyModel(params, config, corpus, losses, bool(record.get("converged", False)))


def train(
    corpus: Corpus,
    *,
    d_mlp: int,
    n_layers: int = 1,
    attention: bool = True,
    layernorm: bool = False,
    activation: str = "relu",
    d_model: int = 32,
    n_heads: int = 2,
    steps: int = 3000,
    batch: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool | None = None,
) -> ToyModel:
    """Train a toy transformer on ``corpus`` with AdamW (jitted steps under ``lax.scan``).

    Args:
      corpus: from :func:`jaxfeat.toy.make_corpus`.
      d_mlp: MLP width (>= 1).
      n_layers: 1 or 2 (any positive number works).
      attention: causal self-attention in each layer.
      layernorm: a final LayerNorm before the unembedding (an ablation: it leaves the
        linear-logit class).
      activation: ``"relu"`` or ``"gelu"``.
      d_model: residual width (divisible by ``n_heads``).
      n_heads: attention heads.
      steps: optimiser steps.
      batch: documents per step.
      learning_rate: AdamW learning rate, cosine-decayed to 0.
      weight_decay: AdamW weight decay.
      seed: integer seed (initialisation and batches).
      progress: a progress bar; ``None`` shows it only on a terminal.

    Returns:
      :class:`ToyModel`.

    Example:
      >>> import jaxfeat
      >>> from jaxfeat import toy
      >>> corpus = toy.make_corpus(jaxfeat.targets.temperature(n=16), n_docs=512)
      >>> model = toy.train(corpus, d_mlp=4, attention=False, steps=50, progress=False)
      >>> model.curve().shape
      (16, 3)
    """
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation={activation!r} is unknown; use 'relu' or 'gelu'.")
    for value, name in (
        (d_mlp, "d_mlp"),
        (n_layers, "n_layers"),
        (d_model, "d_model"),
        (n_heads, "n_heads"),
        (steps, "steps"),
        (batch, "batch"),
    ):
        _validate.positive_int(value, name)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
    config = ToyConfig(
        corpus.vocab,
        corpus.seq_len,
        d_model,
        d_mlp,
        n_layers,
        n_heads,
        bool(attention),
        bool(layernorm),
        activation,
    )
    key_init, key_train = jax.random.split(jax.random.key(seed))
    params = init_params(config, key_init)
    hyper = (
        _validate.positive_float(learning_rate, "learning_rate"),
        _validate.nonnegative_float(weight_decay, "weight_decay"),
        steps,
    )
    state = _adamw(*hyper).init(params)
    tokens = jnp.asarray(corpus.tokens)
    latent = jnp.asarray(corpus.latent_input())
    chunk = min(steps, 250)
    losses = []
    bar = tqdm(
        total=steps,
        desc=f"train d_mlp={d_mlp}",
        leave=False,
        disable=None if progress is None else not progress,
    )
    keys = jax.random.split(key_train, -(-steps // chunk))
    done = 0
    for key in keys:
        n = min(chunk, steps - done)
        params, state, chunk_losses = _train_chunk(
            params, state, key, tokens, latent, config=config, hyper=hyper, steps=n, batch=batch
        )
        losses.append(np.asarray(chunk_losses))
        done += n
        bar.update(n)
        bar.set_postfix(loss=f"{float(chunk_losses[-1]):.4f}")
    bar.close()
    losses = np.concatenate(losses)
    a, b, c = (int(f * len(losses)) for f in (0.6, 0.7, 0.8))
    levelled = c > b > a and losses[a:b].mean() - losses[b:c].mean() <= 0.01 * losses[b:c].mean()
    return ToyModel(params, config, corpus, losses, bool(levelled))


def train_sae(
    acts: np.ndarray,
    *,
    d_sae: int,
    architecture: str = "standard",
    l1: float = 1e-2,
    k: int = 4,
    threshold: float = 0.05,
    l0: float = 1e-2,
    steps: int = 3000,
    batch: int = 512,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> SAE:
    """Train an SAE on activations, SAELens-style, in JAX.

    - ``"standard"``: ReLU, loss ``|x - x̂|² + l1 Σ_i f_i |W_dec[i]|``.
    - ``"topk"``: the ``k`` largest pre-activations, loss ``|x - x̂|²``.
    - ``"jumprelu"``: thresholds trained through a straight-through estimator (rectangle kernel
      of bandwidth ``threshold``), loss ``|x - x̂|² + l0 · (number of active features)``.

    The decoder starts as the encoder's transpose with unit rows, ``b_dec`` at the mean.

    Args:
      acts: (N, d_in) activations (e.g. :meth:`ToyModel.mlp_out`'s ``x``).
      d_sae: dictionary size.
      architecture: ``"standard"``, ``"topk"`` or ``"jumprelu"``.
      l1: L1 coefficient (standard).
      k: features kept (topk).
      threshold: initial JumpReLU threshold and the estimator's bandwidth.
      l0: L0 coefficient (jumprelu).
      steps: optimiser steps (Adam, batches of ``batch`` rows).
      batch: rows per step.
      learning_rate: Adam learning rate.
      seed: integer seed.

    Returns:
      :class:`jaxfeat.sae.SAE` (save it with :func:`jaxfeat.sae.save_saelens`).
    """
    x = jnp.asarray(acts, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"acts must be (N, d_in), got shape {x.shape}.")
    d_in = x.shape[1]
    d_sae = _validate.positive_int(d_sae, "d_sae")
    steps = _validate.positive_int(steps, "steps")
    batch = _validate.positive_int(batch, "batch")
    threshold = _validate.positive_float(threshold, "threshold")
    learning_rate = _validate.positive_float(learning_rate, "learning_rate")
    if architecture == "topk" and not 1 <= _validate.positive_int(k, "k") <= d_sae:
        raise ValueError(f"k={k} must lie in 1..d_sae={d_sae}.")
    key_w, key_train = jax.random.split(jax.random.key(seed))
    W = jax.random.normal(key_w, (d_sae, d_in))
    W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
    params = {"W_enc": W.T, "b_enc": jnp.zeros(d_sae), "W_dec": W, "b_dec": x.mean(0)}
    if architecture == "jumprelu":
        params["log_threshold"] = jnp.full(d_sae, np.log(threshold))
    elif architecture not in ("standard", "topk"):
        raise ValueError(
            f"architecture={architecture!r} is unknown; use 'standard', 'topk' or 'jumprelu'."
        )
    state = optax.adam(learning_rate).init(params)
    params, _ = _train_sae(
        params,
        state,
        key_train,
        x,
        architecture=architecture,
        learning_rate=float(learning_rate),
        steps=steps,
        batch=batch,
        l1=l1,
        k=k,
        bandwidth=threshold,
        l0=l0,
    )
    if architecture == "jumprelu":
        return SAE(
            params["W_enc"],
            params["b_enc"],
            params["W_dec"],
            params["b_dec"],
            jnp.exp(params["log_threshold"]),
            architecture="jumprelu",
        )
    return SAE(
        params["W_enc"],
        params["b_enc"],
        params["W_dec"],
        params["b_dec"],
        architecture=architecture,
        k=k if architecture == "topk" else None,
    )


@jax.custom_vjp
def _step(pre, threshold, bandwidth):
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return _step(pre, threshold, bandwidth), (pre, threshold, bandwidth)


def _step_bwd(res, g):
    pre, threshold, bandwidth = res
    # Rectangle-kernel pseudo-derivative in the threshold (Rajamanoharan et al. 2024).
    window = (jnp.abs(pre - threshold) < bandwidth / 2).astype(pre.dtype) / bandwidth
    return jnp.zeros_like(pre), -(g * window).sum(axis=tuple(range(g.ndim - 1))), None


_step.defvjp(_step_fwd, _step_bwd)


@functools.partial(
    jax.jit, static_argnames=("architecture", "learning_rate", "steps", "batch", "k")
)
def _train_sae(
    params, state, key, x, *, architecture, learning_rate, steps, batch, l1, k, bandwidth, l0
):
    optimizer = optax.adam(learning_rate)

    def loss(params, xb):
        pre = (xb - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        norms = jnp.linalg.norm(params["W_dec"], axis=1)
        if architecture == "standard":
            f = jax.nn.relu(pre)
            penalty = l1 * (f * norms).sum(-1).mean()
        elif architecture == "topk":
            sae = SAE(
                params["W_enc"],
                params["b_enc"],
                params["W_dec"],
                params["b_dec"],
                architecture="topk",
                k=k,
            )
            f = encode(sae, xb)
            penalty = 0.0
        else:
            threshold = jnp.exp(params["log_threshold"])
            gate = _step(pre, threshold, bandwidth)
            f = jax.nn.relu(pre) * gate
            penalty = l0 * gate.sum(-1).mean()
        recon = f @ params["W_dec"] + params["b_dec"]
        return ((recon - xb) ** 2).sum(-1).mean() + penalty

    def step(carry, key):
        params, state = carry
        rows = jax.random.randint(key, (batch,), 0, x.shape[0])
        value, grads = jax.value_and_grad(loss)(params, x[rows])
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), value

    (params, _), losses = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
    return params, losses
