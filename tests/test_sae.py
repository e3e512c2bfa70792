"""jaxfeat.sae: the SAE pytree, SAELens's forward pass against NumPy, files, and logit effects."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given
from hypothesis import strategies as st

from jaxfeat import sae as js
from jaxfeat._io import UMASK

D_IN, D_SAE = 5, 8
FIXTURES = pathlib.Path(__file__).parent / "data" / "saelens"


def random_sae(seed: int, architecture: str = "standard", **static) -> js.SAE:
    rng = np.random.default_rng(seed)
    arrays = dict(
        W_enc=rng.normal(size=(D_IN, D_SAE)),
        b_enc=rng.normal(size=D_SAE) * 0.5,
        W_dec=rng.normal(size=(D_SAE, D_IN)) * rng.uniform(0.5, 2.0, (D_SAE, 1)),
        b_dec=rng.normal(size=D_IN) * 0.3,
    )
    if architecture == "jumprelu":
        arrays["threshold"] = rng.uniform(0.0, 0.5, D_SAE)
    if architecture == "topk":
        static.setdefault("k", 3)
    arrays = {n: jnp.asarray(v, jnp.float32) for n, v in arrays.items()}
    return js.SAE(**arrays, architecture=architecture, **static)


def numpy_encode(sae: js.SAE, x: np.ndarray, *, apply_b_dec: bool | None = None) -> np.ndarray:
    """SAELens's encode, written independently in NumPy (float64)."""
    W_enc, b_enc, W_dec, b_dec = (
        np.asarray(getattr(sae, n), np.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec")
    )
    apply = sae.apply_b_dec_to_input if apply_b_dec is None else apply_b_dec
    pre = (x - b_dec * apply) @ W_enc + b_enc
    if sae.architecture == "standard":
        return np.maximum(pre, 0)
    if sae.architecture == "jumprelu":
        return np.maximum(pre, 0) * (pre > np.asarray(sae.threshold, np.float64))
    if sae.rescale_acts_by_decoder_norm:
        pre = pre * np.linalg.norm(W_dec, axis=1)
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=-1)[..., : sae.k]
    np.put_along_axis(out, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
    return out


def numpy_decode(sae: js.SAE, f: np.ndarray) -> np.ndarray:
    W_dec = np.asarray(sae.W_dec, np.float64)
    if sae.rescale_acts_by_decoder_norm:
        f = f / np.linalg.norm(W_dec, axis=1)
    return f @ W_dec + np.asarray(sae.b_dec, np.float64)


VARIANTS = {
    "standard": ("standard", {}),
    "standard-no-bdec": ("standard", {"apply_b_dec_to_input": False}),
    "jumprelu": ("jumprelu", {}),
    "topk": ("topk", {"k": 3}),
    "topk-rescale": ("topk", {"k": 2, "rescale_acts_by_decoder_norm": True}),
}


# ---------------------------------------------------------------------------------------------
# The forward pass


@pytest.mark.parametrize("variant", VARIANTS)
@given(seed=st.integers(0, 2**31 - 1))
def test_forward_pass_matches_numpy_reference(variant, seed):
    arch, static = VARIANTS[variant]
    sae = random_sae(seed % 1000, arch, **static)
    x = np.random.default_rng(seed).normal(size=(3, 4, D_IN))
    f = np.asarray(js.encode(sae, x))
    np.testing.assert_allclose(f, numpy_encode(sae, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(js.decode(sae, f)), numpy_decode(sae, f), rtol=1e-5, atol=1e-5
    )


def test_the_reference_check_rejects_a_wrong_forward_pass():
    # The comparison above can fail: a reference that forgets to subtract b_dec disagrees.
    sae = random_sae(1)
    x = np.random.default_rng(1).normal(size=(16, D_IN))
    wrong = numpy_encode(sae, x, apply_b_dec=False)
    assert not np.allclose(np.asarray(js.encode(sae, x)), wrong, rtol=1e-5, atol=1e-5)


def test_topk_keeps_exactly_k_and_jumprelu_respects_threshold():
    x = np.random.default_rng(2).normal(size=(64, D_IN)) * 3
    f = np.asarray(js.encode(random_sae(2, "topk", k=3), x))
    assert np.all((f > 0).sum(-1) <= 3) and np.all(f >= 0)
    sae = random_sae(3, "jumprelu")
    pre = np.asarray(js.pre_activations(sae, x))
    f = np.asarray(js.encode(sae, x))
    assert np.all((f > 0) == (pre > np.asarray(sae.threshold)) & (pre > 0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_and_decode_jit_vmap_and_grad(variant):
    arch, static = VARIANTS[variant]
    sae = random_sae(4, arch, **static)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(6, D_IN)), jnp.float32)
    jitted = jax.jit(js.encode)(sae, x)
    np.testing.assert_allclose(jitted, js.encode(sae, x), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(js.encode, (None, 0))(sae, x), js.encode(sae, x), rtol=1e-6)

    def loss(s):
        return jnp.sum((js.decode(s, js.encode(s, x)) - x) ** 2)

    grads = jax.grad(loss)(sae)
    assert isinstance(grads, js.SAE)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads.W_dec).sum()) > 0


def test_vmap_over_a_stack_of_saes():
    saes = [random_sae(s) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *saes)
    x = jnp.ones((2, D_IN))
    out = jax.vmap(js.encode, (0, None))(stacked, x)
    for i, s in enumerate(saes):
        np.testing.assert_allclose(out[i], js.encode(s, x), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(architecture="gated"), "architecture='gated' is not implemented"),
        (dict(b_enc=jnp.zeros(3)), "b_enc has shape"),
        (dict(W_dec=jnp.zeros((D_IN, D_SAE))), "W_dec has shape"),
        (dict(architecture="jumprelu"), "threshold is required"),
        (dict(threshold=jnp.zeros(D_SAE)), "threshold is required for architecture='jumprelu'"),
        (dict(architecture="topk"), "k=None must be a positive integer"),
        (dict(architecture="topk", k=D_SAE + 1), "exceeds d_sae"),
        (dict(k=2), "only used by architecture='topk'"),
        (dict(rescale_acts_by_decoder_norm=True), "'topk' option"),
    ],
)
def test_bad_sae_is_a_clear_error(kwargs, match):
    base = dict(
        W_enc=jnp.zeros((D_IN, D_SAE)),
        b_enc=jnp.zeros(D_SAE),
        W_dec=jnp.zeros((D_SAE, D_IN)),
        b_dec=jnp.zeros(D_IN),
    )
    with pytest.raises(ValueError, match=match):
        js.SAE(**{**base, **kwargs})


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"last axis must be the SAE's d_in = 5"):
        js.encode(random_sae(0), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"d_sae = 8"):
        js.decode(random_sae(0), np.zeros((2, 5)))


# ---------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_is_exact_in_float32(tmp_path, variant):
    arch, static = VARIANTS[variant]
    sae = random_sae(5, arch, **static)
    js.save_saelens(sae, tmp_path, metadata={"hook_name": "blocks.0.hook_mlp_out"})
    back = js.load_saelens(tmp_path)
    for name in ("architecture", "k", "apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        assert getattr(back, name) == getattr(sae, name)
    for a, b in zip(jax.tree_util.tree_leaves(sae), jax.tree_util.tree_leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["metadata"] == {"hook_name": "blocks.0.hook_mlp_out"}
    # SAELens 6 reads a config without sae_lens_version the pre-6.0 way (metadata from the top
    # level); SAELens 5 needs its required fields, and must refuse a rescaled TopK SAE.
    assert cfg["hook_name"] == "blocks.0.hook_mlp_out"
    assert ("hook_layer" in cfg) != sae.rescale_acts_by_decoder_norm
    assert not list(tmp_path.glob(".*tmp"))
    # safetensors writes its file private; the saved files get the umask's usual permissions.
    for name in ("cfg.json", "sae_weights.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~UMASK, name


@pytest.mark.parametrize("dtype, code", [("float16", "F16"), ("bfloat16", "BF16")])
def test_half_precision_files(tmp_path, dtype, code):
    sae = random_sae(6, "jumprelu")
    js.save_saelens(sae, tmp_path, dtype=dtype)
    assert _header(tmp_path)["W_enc"]["dtype"] == code
    assert json.loads((tmp_path / "cfg.json").read_text())["dtype"] == dtype
    loaded = js.load_saelens(tmp_path)
    assert loaded.dtype == jnp.float32  # analysis is not done at three significant digits
    rtol = float(jnp.finfo(jnp.dtype(dtype)).eps)
    np.testing.assert_allclose(loaded.W_dec, sae.W_dec, rtol=rtol, atol=rtol)
    assert js.load_saelens(tmp_path, dtype=dtype).dtype == jnp.dtype(dtype)
    cast = sae.astype(dtype)
    assert cast.threshold.dtype == jnp.dtype(dtype) and cast.architecture == "jumprelu"


def _header(path: pathlib.Path) -> dict:
    raw = (path / "sae_weights.safetensors").read_bytes()
    return json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])


def _write(path: pathlib.Path, cfg: dict, tensors: dict) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    safetensors.numpy.save_file(
        {k: np.asarray(v) for k, v in tensors.items()}, path / "sae_weights.safetensors"
    )
    return path


def _tensors(sae: js.SAE, dtype=np.float32) -> dict:
    names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    return {
        n: np.asarray(getattr(sae, n)).astype(dtype) for n in names if getattr(sae, n) is not None
    }


# The flat configs SAELens wrote before 6.0 (trimmed copies of published cfg.json files: the
# training settings beside the SAE's own fields).
FLAT = {
    "d_in": D_IN,
    "d_sae": D_SAE,
    "model_name": "gpt2-small",
    "hook_point": "blocks.0.hook_mlp_out",
    "hook_point_layer": 0,
    "dtype": "torch.float32",
    "device": "cuda",
    "lr": 4e-4,
    "l1_coefficient": 8e-5,
    "b_dec_init_method": "geometric_median",
    "context_size": 128,
    "sae_lens_version": "3.12.1",
}


def test_flat_pre_6_config_means_standard(tmp_path):
    sae = random_sae(7)
    back = js.load_saelens(_write(tmp_path, FLAT, _tensors(sae)))
    assert back.architecture == "standard" and back.apply_b_dec_to_input
    np.testing.assert_array_equal(back.W_enc, sae.W_enc)


def test_flat_pre_6_topk_and_jumprelu(tmp_path):
    topk = random_sae(8, "topk", k=3)
    cfg = {
        **FLAT,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "apply_b_dec_to_input": False,
    }
    back = js.load_saelens(_write(tmp_path / "topk", cfg, _tensors(topk)))
    assert (back.architecture, back.k, back.apply_b_dec_to_input) == ("topk", 3, False)
    jump = random_sae(9, "jumprelu")
    back = js.load_saelens(
        _write(tmp_path / "jump", {**FLAT, "architecture": "jumprelu"}, _tensors(jump))
    )
    x = np.random.default_rng(9).normal(size=(4, D_IN))
    np.testing.assert_allclose(js.encode(back, x), js.encode(jump, x), rtol=1e-6)


@pytest.mark.parametrize("key", ["scaling_factor", "finetuning_scaling_factor"])
def test_pre_6_scaling_factor(tmp_path, key):
    sae = random_sae(10)
    ones = {**_tensors(sae), key: np.ones(D_SAE, np.float32)}
    back = js.load_saelens(_write(tmp_path / "ones", FLAT, ones))
    np.testing.assert_array_equal(back.W_dec, sae.W_dec)  # all ones: dropped, as SAELens does
    scale = np.linspace(0.5, 2.0, D_SAE).astype(np.float32)
    cfg = {**FLAT, "finetuning_scaling_factor": True}
    back = js.load_saelens(_write(tmp_path / "scaled", cfg, {**_tensors(sae), key: scale}))
    f = np.asarray(js.encode(sae, np.ones((2, D_IN))))
    np.testing.assert_allclose(js.decode(back, f), numpy_decode(sae, f * scale), rtol=1e-5)
    with pytest.raises(ValueError, match=f"'{key}' is not all ones"):
        js.load_saelens(_write(tmp_path / "bad", FLAT, {**_tensors(sae), key: scale}))


def test_expected_average_only_in_folds_the_scaling_factor(tmp_path):
    sae = random_sae(11)
    path = _write(tmp_path, {**FLAT, "normalize_activations": True}, _tensors(sae))
    with pytest.raises(ValueError, match="pass norm_scaling_factor="):
        js.load_saelens(path)
    for bad in (0.0, float("nan"), "a"):
        with pytest.raises(ValueError, match="norm_scaling_factor="):
            js.load_saelens(path, norm_scaling_factor=bad)
    back = js.load_saelens(path, norm_scaling_factor=2.0)
    x = np.random.default_rng(11).normal(size=(4, D_IN))
    # The SAE was trained on 2x; the folded one reads raw activations and returns raw ones.
    np.testing.assert_allclose(js.encode(back, x), js.encode(sae, 2 * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        js.decode(back, js.encode(back, x)),
        js.decode(sae, js.encode(sae, 2 * x)) / 2,
        rtol=1e-5,
        atol=1e-6,
    )


V6 = {
    "d_in": D_IN,
    "d_sae": D_SAE,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {"sae_lens_version": "6.18.0"},
    "architecture": "standard",
}


@pytest.mark.parametrize(
    "cfg, tensors, match",
    [
        ({"architecture": "gated"}, {}, "architecture='gated' is not implemented"),
        ({"architecture": "transcoder"}, {}, "architecture='transcoder' is not implemented"),
        ({"normalize_activations": "layer_norm"}, {}, "normalize_activations='layer_norm'"),
        ({"normalize_activations": "constant_norm_rescale"}, {}, "constant_norm_rescale"),
        ({"activation_fn": "tanh-relu"}, {}, "activation_fn='tanh-relu' is not implemented"),
        ({"architecture": "topk"}, {}, "needs 'k'"),
        ({"architecture": "jumprelu"}, {}, r"missing \['threshold'\]"),
        ({}, {"threshold": np.zeros(D_SAE, np.float32)}, r"unknown \['threshold'\]"),
        ({}, {"W_gate": np.zeros((D_IN, D_SAE), np.float32)}, r"unknown \['W_gate'\]"),
        ({}, {"b_dec": np.zeros(D_IN + 1, np.float32)}, r"'b_dec' has shape \(6,\)"),
        ({"d_sae": D_SAE + 1}, {}, r"'W_enc' has shape \(5, 8\)"),
        ({"d_in": "5"}, {}, "'d_in' must be an integer"),
        ({"architecture": "topk", "k": 1.7}, {}, "'k' must be a positive integer, got 1.7"),
        ({"architecture": "topk", "k": True}, {}, "'k' must be a positive integer, got True"),
        ({"apply_b_dec_to_input": "false"}, {}, "'apply_b_dec_to_input' must be true or false"),
        ({}, {"W_dec": np.full((D_SAE, D_IN), np.nan, np.float32)}, "'W_dec' contains NaN"),
    ],
)
def test_bad_files_name_the_key(tmp_path, cfg, tensors, match):
    path = _write(tmp_path, {**V6, **cfg}, {**_tensors(random_sae(12)), **tensors})
    with pytest.raises(ValueError, match=match) as info:
        js.load_saelens(path)
    assert str(path) in str(info.value)


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(ValueError, match="cfg.json not found"):
        js.load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(V6))
    with pytest.raises(ValueError, match="sae_weights.safetensors not found"):
        js.load_saelens(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        js.load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        js.load_saelens(tmp_path)


def test_bfloat16_tensors_written_by_another_tool(tmp_path):
    sae = random_sae(13)
    path = _write(tmp_path, {**V6, "dtype": "bfloat16"}, _tensors(sae, ml_dtypes.bfloat16))
    assert _header(path)["W_dec"]["dtype"] == "BF16"
    loaded = js.load_saelens(path)
    np.testing.assert_allclose(loaded.W_dec, sae.W_dec, rtol=2**-7, atol=2**-7)


# ---------------------------------------------------------------------------------------------
# Files that SAELens itself wrote (tests/data/saelens, made by make_fixtures.py there)


@pytest.mark.parametrize(
    "folder", sorted(p.name for p in FIXTURES.glob("*") if (p / "cfg.json").is_file())
)
def test_files_written_by_saelens(folder):
    sae = js.load_saelens(FIXTURES / folder)
    io = np.load(FIXTURES / folder / "io.npz")
    half = json.loads((FIXTURES / folder / "cfg.json").read_text()).get("dtype") in (
        "float16",
        "bfloat16",
        "torch.float16",
        "torch.bfloat16",
    )
    tol = 2e-2 if half else 1e-5
    f = np.asarray(js.encode(sae, io["x"]))
    np.testing.assert_allclose(f, io["feature_acts"], rtol=tol, atol=tol)
    np.testing.assert_allclose(js.decode(sae, io["feature_acts"]), io["recon"], rtol=tol, atol=tol)


def test_saelens_fixtures_are_present():
    # Guards the parametrised test above against silently collecting nothing.
    assert len(list(FIXTURES.glob("*/cfg.json"))) >= 5


# ---------------------------------------------------------------------------------------------
# Logit effects


def test_logit_effects_are_decoder_rows_through_the_unembedding():
    sae = random_sae(14)
    W_U = np.random.default_rng(14).normal(size=(D_IN, 7))
    effects = np.asarray(js.logit_effects(sae, W_U))
    np.testing.assert_allclose(effects, np.asarray(sae.W_dec) @ W_U, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        js.logit_effects(sae, W_U, tokens=[4, 1]), effects[:, [4, 1]], rtol=1e-5, atol=1e-6
    )
    # what one unit of the feature adds to the logits through decode, for topk rescaling too
    topk = random_sae(14, "topk", k=2, rescale_acts_by_decoder_norm=True)
    e = np.zeros(D_SAE)
    e[3] = 1.0
    moved = (np.asarray(js.decode(topk, e)) - np.asarray(js.decode(topk, 0 * e))) @ W_U
    np.testing.assert_allclose(js.logit_effects(topk, W_U)[3], moved, rtol=1e-5, atol=1e-6)


def _layer_norm(x):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True)), np.sqrt((centred**2).mean())


def test_ln_scale_is_exact_for_a_frozen_scale_and_first_order_otherwise():
    rng = np.random.default_rng(15)
    sae = random_sae(15)
    W_U = rng.normal(size=(D_IN, 6))
    x = rng.normal(size=D_IN)
    _, sigma = _layer_norm(x)
    effects = np.asarray(js.logit_effects(sae, W_U, ln_scale=sigma), np.float64)
    d = np.asarray(sae.W_dec, np.float64)
    # Frozen scale: the logits of (x + a d_i - mean) / sigma move by exactly a l_i.
    frozen = lambda v: ((v - v.mean()) / sigma) @ W_U
    np.testing.assert_allclose(frozen(x + 2.0 * d[0]) - frozen(x), 2.0 * effects[0], rtol=1e-5)
    # The real LayerNorm: a derivative check. For a direction orthogonal to the centred input the
    # frozen-scale effect is the exact derivative; for a generic one it misses the scale's term.
    xc = x - x.mean()
    g = d[1] - d[1].mean()
    g_perp = g - xc * (g @ xc) / (xc @ xc)
    h = 1e-6
    derivative = lambda v: (_layer_norm(x + h * v)[0] - _layer_norm(x - h * v)[0]) @ W_U / (2 * h)
    perp_sae = js.SAE(sae.W_enc, sae.b_enc, sae.W_dec.at[1].set(g_perp), sae.b_dec)
    np.testing.assert_allclose(
        derivative(g_perp), js.logit_effects(perp_sae, W_U, ln_scale=sigma)[1], rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(derivative(d[1]), effects[1], rtol=1e-3, atol=1e-3)


def test_logit_effect_input_errors():
    sae = random_sae(16)
    with pytest.raises(ValueError, match=r"W_U has shape \(7, 5\)"):
        js.logit_effects(sae, np.zeros((7, D_IN)))
    with pytest.raises(ValueError, match=r"tokens \[9\] are out of range"):
        js.logit_effects(sae, np.zeros((D_IN, 9)), tokens=[0, 9])
    with pytest.raises(ValueError, match="repeated"):
        js.logit_effects(sae, np.zeros((D_IN, 9)), tokens=[1, 1])
    with pytest.raises(ValueError, match="ln_scale"):
        js.logit_effects(sae, np.zeros((D_IN, 9)), ln_scale=0.0)
