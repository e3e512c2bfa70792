"""SAELens's on-disk format: ``cfg.json`` plus ``sae_weights.safetensors``, read and written
without torch (the safetensors package's NumPy API).

Two config generations exist. SAELens 6 writes ``{d_in, d_sae, dtype, device,
apply_b_dec_to_input, normalize_activations, reshape_activations, metadata, architecture}`` (plus
``k`` and ``rescale_acts_by_decoder_norm`` for topk); earlier versions wrote one flat dictionary
with the training settings, where a missing ``architecture`` means ``"standard"`` and TopK is
``activation_fn_str="topk"`` with ``activation_fn_kwargs={"k": ...}``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy

from . import _validate
from ._io import atomic_write
from ._sae import ARCHITECTURES, SAE

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}
DTYPES["bfloat16"] = ml_dtypes.bfloat16
# Modes SAELens applies at run time that jaxfeat does not: each needs the input's own norm in
# decode (constant_norm_rescale, layer_norm) or the dataset's scaling factor
# (expected_average_only_in, folded by load_saelens when it is passed).
_NORMALIZE = ("none", "expected_average_only_in")


def load_saelens(
    path: str | Path, *, dtype: str | None = None, norm_scaling_factor: float | None = None
) -> SAE:
    """Load an SAE saved in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``).

    Reads both config generations (SAELens 6's, and the flat pre-6.0 dictionaries) and float32,
    float64, float16 and bfloat16 tensors. Nothing in the weights file is skipped: every tensor
    must be one the architecture uses. A pre-6.0 ``scaling_factor`` (the fine-tuning scale on
    the activations) is folded into ``W_dec``, which is exact; all ones, it is dropped, as SAELens
    does.

    Args:
      path: the directory.
      dtype: the dtype of the loaded arrays (``"float32"``, ``"float64"``, ``"float16"``,
        ``"bfloat16"``). ``None``: as in the file, except that half precision becomes float32, so
        that feature analysis is not done at three significant digits.
      norm_scaling_factor: for ``normalize_activations="expected_average_only_in"``: the factor
        the activations were multiplied by in training. It is folded into the weights as
        SAELens's ``fold_activation_norm_scaling_factor`` does, so the loaded SAE reads raw
        activations.

    An attention-output SAE (``reshape_activations="hook_z"``) loads, and reads and returns
    activations with the heads flattened, ``x.reshape(..., n_heads * d_head)``; SAELens reshapes
    them itself.

    Returns:
      :class:`jaxfeat.sae.SAE`.

    Raises:
      ValueError: naming the file and the key or field, for a missing file, an unknown or missing
        tensor, a shape that does not match ``d_in``/``d_sae``, or an architecture,
        ``normalize_activations`` mode or activation function that jaxfeat does not implement.

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> sae = SAE(jnp.eye(2), jnp.zeros(2), jnp.eye(2), jnp.zeros(2))
      >>> save_saelens(sae, d)
      >>> load_saelens(d).architecture
      'standard'
    """
    path = Path(path)
    cfg = _read_config(path)
    tensors = _read_weights(path / WEIGHTS)
    where = f"{path / WEIGHTS}"
    architecture = _architecture(cfg, path / CONFIG)
    k = None
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise ValueError(f"{path / CONFIG}: a topk SAE needs 'k'; the field is missing.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{path / CONFIG}: field 'k' must be a positive integer, got {k!r}.")
    flags = {}
    for key, default in (("apply_b_dec_to_input", True), ("rescale_acts_by_decoder_norm", False)):
        flags[key] = cfg.get(key, default)
        if not isinstance(flags[key], bool):
            raise ValueError(
                f"{path / CONFIG}: field {key!r} must be true or false, got {flags[key]!r}."
            )
    _fold_finetuning_scale(tensors, cfg, where)
    if architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        # SAELens's training JumpReLU stores log(threshold).
        tensors["threshold"] = np.exp(tensors.pop("log_threshold").astype(np.float32))
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (
        ("threshold",) if architecture == "jumprelu" else ()
    )
    missing = [n for n in names if n not in tensors]
    unknown = [n for n in tensors if n not in names]
    if missing or unknown:
        raise ValueError(
            f"{where}: an SAE with architecture={architecture!r} has tensors {list(names)}; "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (
                f"unknown {unknown} (jaxfeat would ignore them and compute wrong features)"
                if unknown
                else ""
            )
            + "."
        )
    _check_shapes(tensors, cfg, where, path / CONFIG)
    out_dtype = _dtype(dtype, tensors["W_enc"].dtype)
    arrays = {n: jnp.asarray(tensors[n].astype(out_dtype)) for n in names}
    sae = SAE(
        **arrays,
        architecture=architecture,
        k=k,
        **flags,
    )
    mode = _normalize_mode(cfg, path / CONFIG)
    if mode == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise ValueError(
                f"{path / CONFIG}: normalize_activations='expected_average_only_in' scales the "
                "activations by a dataset constant that cfg.json does not store; pass "
                "norm_scaling_factor= (SAELens's ActivationScaler.scaling_factor) to fold it in."
            )
        s = _validate.positive_float(norm_scaling_factor, "norm_scaling_factor")
        sae = dataclasses.replace(
            sae, W_enc=sae.W_enc * s, W_dec=sae.W_dec / s, b_dec=sae.b_dec / s
        )
    elif norm_scaling_factor is not None:
        raise ValueError(
            "norm_scaling_factor is only used with normalize_activations="
            f"'expected_average_only_in'; {path / CONFIG} says {mode!r}."
        )
    return sae


def save_saelens(
    sae: SAE,
    path: str | Path,
    *,
    dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save an SAE in SAELens's format: ``SAE.load_from_disk`` of SAELens 6 and 5 reads it.

    Writes ``sae_weights.safetensors`` (tensors ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and, for
    JumpReLU, ``threshold``) and ``cfg.json``, each atomically (a temporary file, then a rename).
    The config has SAELens 6's fields with ``metadata`` nested, and the same metadata once more at
    the top level with the fields SAELens 5 requires (``None`` where unknown): without a
    ``sae_lens_version`` SAELens 6 reads a config the pre-6.0 way, which takes the metadata from
    the top level. A TopK SAE with ``rescale_acts_by_decoder_norm`` has no SAELens 5 spelling,
    so its config leaves out ``hook_layer``, which SAELens 5 requires, and SAELens 5 refuses it.

    Args:
      sae: the SAE.
      path: the directory (created if needed).
      dtype: the tensors' dtype on disk (default: the SAE's own).
      metadata: the config's ``metadata`` (``model_name``, ``hook_name``, ``hook_layer``, ...).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> d = tempfile.mkdtemp()
      >>> save_saelens(SAE(jnp.eye(2), jnp.zeros(2), jnp.eye(2), jnp.zeros(2)), d, dtype="bfloat16")
      >>> load_saelens(d, dtype="bfloat16").W_dec.dtype
      dtype(bfloat16)
    """
    path = Path(path)
    name = str(jnp.dtype(dtype if dtype is not None else sae.dtype))
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} cannot be saved; use one of {', '.join(DTYPES)}.")
    tensors = {
        n: np.asarray(getattr(sae, n)).astype(DTYPES[name])
        for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
        if getattr(sae, n) is not None
    }
    meta = dict(metadata or {})
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": name,
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
        "architecture": sae.architecture,
    }
    if sae.architecture == "topk":
        cfg["k"] = int(sae.k)
        cfg["rescale_acts_by_decoder_norm"] = bool(sae.rescale_acts_by_decoder_norm)
    flat = {key: meta.get(key) for key in _SAELENS5_REQUIRED} | meta
    if sae.rescale_acts_by_decoder_norm:
        # Without hook_layer (which SAELens 6 ignores) SAELens 5 refuses the file instead of
        # computing TopK on unscaled pre-activations.
        flat = {key: value for key, value in meta.items() if key != "hook_layer"}
    else:
        topk = sae.architecture == "topk"
        flat["activation_fn_str"] = "topk" if topk else "relu"
        flat["activation_fn_kwargs"] = {"k": int(sae.k)} if topk else {}
    cfg |= {key: value for key, value in flat.items() if key not in cfg}
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS, lambda tmp: safetensors.numpy.save_file(tensors, tmp))
    atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2)))


# Top-level fields SAELens 5's config class has no default for.
_SAELENS5_REQUIRED = (
    "model_name",
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "context_size",
    "dataset_path",
)


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    if not file.is_file():
        raise ValueError(f"{file} not found: an SAELens directory holds {CONFIG} and {WEIGHTS}.")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}.") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(cfg).__name__}.")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool):
            raise ValueError(f"{file}: field {key!r} must be an integer, got {cfg.get(key)!r}.")
    return cfg


def _read_weights(file: Path) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise ValueError(f"{file} not found: an SAELens directory holds {CONFIG} and {WEIGHTS}.")
    try:
        return dict(safetensors.numpy.load_file(file))
    except Exception as err:  # the Rust reader raises its own error types
        raise ValueError(f"{file} is not a readable safetensors file: {err}.") from None


def _architecture(cfg: Mapping[str, Any], file: Path) -> str:
    arch = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if arch == "standard" and activation == "topk":
        arch = "topk"  # the pre-6.0 spelling of a TopK SAE
    elif arch == "standard" and activation != "relu":
        raise ValueError(
            f"{file}: activation_fn={activation!r} is not implemented; jaxfeat reads 'relu' and "
            "'topk' standard SAEs."
        )
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{file}: architecture={arch!r} is not implemented; jaxfeat reads "
            f"{', '.join(map(repr, ARCHITECTURES))} (gated SAEs and transcoders are not supported)."
        )
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise ValueError(
            f"{file}: reshape_activations={cfg['reshape_activations']!r} is not implemented."
        )
    return arch


def _normalize_mode(cfg: Mapping[str, Any], file: Path) -> str:
    mode = cfg.get("normalize_activations", "none")
    if mode is None or mode is False:
        mode = "none"
    elif mode is True:  # pre-6.0 boolean
        mode = "expected_average_only_in"
    if mode not in _NORMALIZE:
        raise ValueError(
            f"{file}: normalize_activations={mode!r} is not implemented (its decode depends on "
            "each input's norm); jaxfeat reads 'none', and 'expected_average_only_in' with "
            "norm_scaling_factor=."
        )
    return mode


def _fold_finetuning_scale(tensors: dict[str, np.ndarray], cfg: Mapping[str, Any], where: str):
    # SAELens 5 names the tensor finetuning_scaling_factor; earlier files scaling_factor.
    names = [n for n in ("scaling_factor", "finetuning_scaling_factor") if n in tensors]
    if not names:
        return
    scale = tensors.pop(names[0]).astype(np.float32)
    if np.all(scale == 1.0):
        return
    if not cfg.get("finetuning_scaling_factor", False):
        raise ValueError(
            f"{where}: tensor {names[0]!r} is not all ones but the config's "
            "finetuning_scaling_factor is false; the file is inconsistent."
        )
    if "W_dec" in tensors and scale.shape == (tensors["W_dec"].shape[0],):
        # decode((f * s)) = f @ (s[:, None] * W_dec): exact.
        tensors["W_dec"] = (tensors["W_dec"].astype(np.float32) * scale[:, None]).astype(
            tensors["W_dec"].dtype
        )
    else:
        raise ValueError(f"{where}: tensor {names[0]!r} must be (d_sae,), got {scale.shape}.")


def _check_shapes(tensors, cfg, where: str, cfg_file: Path) -> None:
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    expected = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    for name in (n for n in expected if n in tensors):
        array = tensors[name]
        if array.shape != expected[name]:
            raise ValueError(
                f"{where}: tensor {name!r} has shape {array.shape}, but {cfg_file} says "
                f"d_in={d_in}, d_sae={d_sae}, so it must be {expected[name]}."
            )
        if array.dtype.kind != "f" and array.dtype != ml_dtypes.bfloat16:
            raise ValueError(
                f"{where}: tensor {name!r} has dtype {array.dtype}; weights are floats."
            )
        if not np.all(np.isfinite(array.astype(np.float32))):
            raise ValueError(f"{where}: tensor {name!r} contains NaN or inf.")


def _dtype(dtype: str | None, stored: np.dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32) if np.dtype(stored).itemsize < 4 else np.dtype(stored)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
    return np.dtype(DTYPES[dtype])
