"""Sparse autoencoders as pytrees: SAELens's forward pass and each feature's effect on the logits.

Names and shapes follow SAELens (``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in),
``b_dec``, ``threshold``), so code written against SAELens reads the same here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate

ARCHITECTURES = ("standard", "jumprelu", "topk")
_ARRAYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class SAE:
    """A sparse autoencoder in SAELens's conventions.

    ``f = act(W_encᵀ (x - b_dec·[apply_b_dec_to_input]) + b_enc)``, ``x̂ = W_decᵀ f + b_dec``, with
    ``act`` ReLU (``"standard"``), ``ReLU(pre)·1[pre > threshold]`` (``"jumprelu"``) or "keep the
    ``k`` largest pre-activations, then ReLU" (``"topk"``). A pytree: the arrays are leaves, the
    rest is static, so an SAE passes through ``jit``, ``vmap`` and ``grad``.

    Attributes:
      W_enc: (d_in, d_sae) encoder.
      b_enc: (d_sae,) encoder bias.
      W_dec: (d_sae, d_in) decoder; row i is feature i's direction.
      b_dec: (d_in,) decoder bias.
      threshold: (d_sae,) JumpReLU thresholds; ``None`` for the other architectures.
      architecture: ``"standard"``, ``"jumprelu"`` or ``"topk"``.
      k: features kept per input (``"topk"`` only, else ``None``).
      apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
      rescale_acts_by_decoder_norm: ``"topk"`` only: select on pre-activations scaled by the
        decoder row norms, and divide by them again when decoding (SAELens's option of that name).

    Raises:
      ValueError: for an unknown architecture, inconsistent shapes, a missing or superfluous
        ``threshold``, or a missing ``k``.

    Example:
      >>> import jax.numpy as jnp
      >>> sae = SAE(jnp.eye(2), jnp.zeros(2), jnp.eye(2), jnp.zeros(2))
      >>> sae.d_in, sae.d_sae, sae.architecture
      (2, 2, 'standard')
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    threshold: jax.Array | None = None
    architecture: str = "standard"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            value = getattr(self, name)
            if value is not None and not _validate.is_traced(value):
                object.__setattr__(self, name, jnp.asarray(value))
        _check(self)

    def tree_flatten(self):
        return tuple(getattr(self, n) for n in _ARRAYS), (
            self.architecture,
            self.k,
            self.apply_b_dec_to_input,
            self.rescale_acts_by_decoder_norm,
        )

    @classmethod
    def tree_unflatten(cls, static, children):
        # Unflattening skips validation: under vmap or tree_map the leaves need not be arrays.
        obj = object.__new__(cls)
        for name, value in zip(_ARRAYS, children, strict=True):
            object.__setattr__(obj, name, value)
        for name, value in zip(_STATIC, static, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads."""
        return self.W_enc.shape[-2]

    @property
    def d_sae(self) -> int:
        """Number of dictionary features."""
        return self.W_enc.shape[-1]

    @property
    def dtype(self) -> jnp.dtype:
        """The dtype inputs are cast to before encoding (that of ``W_enc``), as in SAELens."""
        return self.W_enc.dtype

    def astype(self, dtype: jnp.dtype | str) -> SAE:
        """The same SAE with every array cast to ``dtype``."""
        cast = {
            n: None if getattr(self, n) is None else getattr(self, n).astype(dtype) for n in _ARRAYS
        }
        return dataclasses.replace(self, **cast)


_STATIC = ("architecture", "k", "apply_b_dec_to_input", "rescale_acts_by_decoder_norm")


def _check(sae: SAE) -> None:
    if sae.architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture={sae.architecture!r} is not implemented; use one of "
            f"{', '.join(map(repr, ARCHITECTURES))}."
        )
    shapes = {n: np.shape(getattr(sae, n)) for n in _ARRAYS if getattr(sae, n) is not None}
    if len(shapes["W_enc"]) != 2:
        raise ValueError(f"W_enc must be (d_in, d_sae), got shape {shapes['W_enc']}.")
    d_in, d_sae = shapes["W_enc"]
    expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name, shape in expected.items():
        if name in shapes and shapes[name] != shape:
            raise ValueError(
                f"{name} has shape {shapes[name]}, but W_enc {shapes['W_enc']} makes "
                f"d_in={d_in}, d_sae={d_sae}: {name} must be {shape}."
            )
    if (sae.architecture == "jumprelu") != (sae.threshold is not None):
        raise ValueError(
            "threshold is required for architecture='jumprelu' and only for it; got "
            f"architecture={sae.architecture!r} with threshold "
            f"{'missing' if sae.threshold is None else 'given'}."
        )
    if sae.architecture == "topk":
        k = _validate.positive_int(sae.k, "k")
        if k > d_sae:
            raise ValueError(f"k={k} exceeds d_sae={d_sae}; topk keeps at most d_sae features.")
    elif sae.k is not None:
        raise ValueError(f"k={sae.k!r} is only used by architecture='topk'; pass k=None.")
    if sae.rescale_acts_by_decoder_norm and sae.architecture != "topk":
        raise ValueError("rescale_acts_by_decoder_norm is a 'topk' option; set it to False.")


def _check_width(x: ArrayLike, sae: SAE, name: str, width: int, what: str) -> None:
    if np.ndim(x) < 1 or np.shape(x)[-1] != width:
        raise ValueError(
            f"{name} has shape {np.shape(x)}; its last axis must be the SAE's {what} = {width}."
        )


def _decoder_norms(sae: SAE) -> jax.Array:
    return jnp.linalg.norm(sae.W_dec, axis=-1)


def pre_activations(sae: SAE, x: ArrayLike) -> jax.Array:
    """The encoder's pre-activations ``W_encᵀ (x - b_dec·[apply_b_dec_to_input]) + b_enc``.

    Args:
      sae: the SAE.
      x: (..., d_in) activations at the SAE's site; cast to ``sae.dtype`` as SAELens does.

    Returns:
      (..., d_sae) pre-activations.

    Example:
      >>> import jax.numpy as jnp
      >>> sae = SAE(jnp.eye(2), jnp.array([0.0, -1.0]), jnp.eye(2), jnp.zeros(2))
      >>> pre_activations(sae, jnp.array([0.5, 0.5]))
      Array([ 0.5, -0.5], dtype=float32)
    """
    _check_width(x, sae, "x", sae.d_in, "d_in")
    x = jnp.asarray(x).astype(sae.dtype)
    if sae.apply_b_dec_to_input:
        x = x - sae.b_dec
    return x @ sae.W_enc + sae.b_enc


def encode(sae: SAE, x: ArrayLike) -> jax.Array:
    r"""Feature activations, exactly as SAELens's ``encode`` for each architecture.

    .. math::
       \mathrm{pre} = W_\mathrm{enc}^\top (x - b_\mathrm{dec}) + b_\mathrm{enc},\qquad
       f = \begin{cases} \mathrm{ReLU}(\mathrm{pre}) & \text{standard} \\
       \mathrm{ReLU}(\mathrm{pre})\,1[\mathrm{pre} > \theta] & \text{jumprelu} \\
       \mathrm{ReLU}(\mathrm{pre}) \text{ on the } k \text{ largest, else } 0 & \text{topk}
       \end{cases}

    For ``"topk"`` with ``rescale_acts_by_decoder_norm`` the pre-activations are first multiplied
    by the decoder row norms. Differentiable everywhere except through TopK's choice of the k
    features (the gradient flows through the kept values). Exact ties among TopK's candidates
    keep the lowest indices here; torch's ``topk`` may keep others, so tied inputs can differ
    from SAELens.

    Args:
      sae: the SAE.
      x: (..., d_in) activations at the SAE's site.

    Returns:
      (..., d_sae) activations, in ``sae.dtype``.

    Example:
      >>> import jax.numpy as jnp
      >>> sae = SAE(jnp.eye(3), jnp.zeros(3), jnp.eye(3), jnp.zeros(3), architecture="topk", k=1)
      >>> encode(sae, jnp.array([0.2, 0.9, -1.0]))
      Array([0. , 0.9, 0. ], dtype=float32)
    """
    pre = pre_activations(sae, x)
    if sae.architecture == "standard":
        return jax.nn.relu(pre)
    if sae.architecture == "jumprelu":
        return jax.nn.relu(pre) * (pre > sae.threshold).astype(pre.dtype)
    if sae.rescale_acts_by_decoder_norm:
        pre = pre * _decoder_norms(sae)
    values, index = jax.lax.top_k(pre, sae.k)
    flat_values = jax.nn.relu(values).reshape(-1, sae.k)
    flat_index = index.reshape(-1, sae.k)
    scatter = jax.vmap(lambda i, v: jnp.zeros(sae.d_sae, pre.dtype).at[i].set(v))
    return scatter(flat_index, flat_values).reshape(pre.shape)


def decode(sae: SAE, f: ArrayLike) -> jax.Array:
    """The reconstruction ``W_decᵀ f + b_dec``, exactly as SAELens's ``decode``.

    For ``"topk"`` with ``rescale_acts_by_decoder_norm`` the activations are divided by the
    decoder row norms first, undoing the scaling :func:`encode` applied.

    Args:
      sae: the SAE.
      f: (..., d_sae) feature activations.

    Returns:
      (..., d_in) reconstruction.

    Example:
      >>> import jax.numpy as jnp
      >>> sae = SAE(jnp.eye(2), jnp.zeros(2), 2 * jnp.eye(2), jnp.ones(2))
      >>> decode(sae, jnp.array([1.0, 0.0]))
      Array([3., 1.], dtype=float32)
    """
    _check_width(f, sae, "f", sae.d_sae, "d_sae")
    f = jnp.asarray(f).astype(sae.dtype)
    if sae.rescale_acts_by_decoder_norm:
        f = f / _decoder_norms(sae)
    return f @ sae.W_dec + sae.b_dec


def logit_effects(
    sae: SAE,
    W_U: ArrayLike,
    *,
    tokens: ArrayLike | None = None,
    ln_scale: float | None = None,
) -> jax.Array:
    r"""Each feature's effect on the next-token logits per unit of activation: ``l_i = d_i W_U``.

    ``d_i`` is what one unit of feature i adds to :func:`decode`'s output (``W_dec[i]``, divided
    by its norm for ``"topk"`` with ``rescale_acts_by_decoder_norm``).

    Without ``ln_scale`` this is exact when nothing nonlinear sits between the SAE's site and the
    unembedding (logits ``= x W_U + b_U``). With a final LayerNorm,
    ``LN(x) = γ (x - mean(x)) / σ(x) + β``, fold ``γ`` into ``W_U`` (``diag(γ) W_U``; ``β W_U``
    only shifts every logit's constant) and pass the LayerNorm scale ``σ`` (the root mean square
    of the centred input, ``eps`` included) as ``ln_scale``: the effect is then

    .. math:: l_i = \frac{(d_i - \bar d_i \mathbf 1)\, W_U}{\sigma}.

    That is exact only while σ stays at the frozen value, i.e. for inputs whose LayerNorm scale
    is ``ln_scale``. Otherwise it is the first-order (Jacobian) effect with the scale's own change
    dropped: the Jacobian of ``(x - mean)/σ`` applied to ``d_i`` also has the term
    ``-x̃ (x̃·d̃_i) / (d_in σ³)`` (``x̃``, ``d̃_i`` centred), which vanishes only when ``d̃_i ⊥ x̃``, and
    beyond first order σ moves with the activation.

    Args:
      sae: the SAE.
      W_U: (d_in, V) unembedding (with any final LayerNorm's γ folded in).
      tokens: optional (n,) token ids: return only those columns.
      ln_scale: the frozen final-LayerNorm scale σ (> 0), or ``None`` for no LayerNorm.

    Returns:
      (d_sae, V) or (d_sae, n) logit effects, in float32 or wider.

    Example:
      >>> import jax.numpy as jnp
      >>> sae = SAE(jnp.eye(2), jnp.zeros(2), jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.zeros(2))
      >>> logit_effects(sae, jnp.array([[1.0, -1.0], [0.0, 1.0]]))
      Array([[ 1., -1.],
             [ 0.,  2.]], dtype=float32)
    """
    W_U = check_unembedding(W_U, sae)
    d = _validate.float_array(sae.W_dec, "W_dec")
    if sae.rescale_acts_by_decoder_norm:
        d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    if ln_scale is not None:
        d = (d - d.mean(axis=-1, keepdims=True)) / _validate.positive_float(ln_scale, "ln_scale")
    if tokens is not None:
        W_U = W_U[:, token_ids(tokens, W_U.shape[1])]
    return d @ W_U.astype(d.dtype)


def check_unembedding(W_U: ArrayLike, sae: SAE) -> jax.Array:
    shape = np.shape(W_U)
    if len(shape) != 2 or shape[0] != sae.d_in:
        raise ValueError(
            f"W_U has shape {shape}; it must be (d_in, V) = ({sae.d_in}, V), the unembedding of "
            "the residual stream the SAE reads (transpose it if it is (V, d_in))."
        )
    if not _validate.is_traced(W_U) and not np.all(np.isfinite(np.asarray(W_U, np.float32))):
        raise ValueError("W_U contains NaN or inf.")
    return _validate.float_array(W_U, "W_U")


def token_ids(tokens: ArrayLike, vocab: int) -> np.ndarray:
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size < 2 or ids.dtype.kind not in "iu":
        raise ValueError(
            f"tokens must be a 1-D array of at least 2 integer token ids, got {ids.dtype} "
            f"array of shape {ids.shape}."
        )
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.size:
        raise ValueError(f"tokens {bad.tolist()} are out of range for a vocabulary of V={vocab}.")
    if np.unique(ids).size != ids.size:
        raise ValueError("tokens has repeated ids; list each token once.")
    return ids
