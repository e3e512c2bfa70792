"""Regenerate the SAELens reference fixtures in this folder.

Each subfolder holds a tiny SAE (d_in=6, d_sae=10) written by the real SAELens
``save_model`` (``cfg.json`` + ``sae_weights.safetensors``) and an ``io.npz``
(float32) with inputs ``x`` (5, 6), ``feature_acts = sae.encode(x)`` and
``recon = sae.decode(feature_acts)`` computed by SAELens in the SAE's own dtype.

Needs torch and SAELens, which are NOT project dependencies::

    python -m venv .venv-saelens
    .venv-saelens/bin/pip install torch==2.13.0
    .venv-saelens/bin/pip install sae-lens torch==2.13.0
    .venv-saelens/bin/python tests/data/saelens/make_fixtures.py

The ``*_v5_*`` folders (pre-6.0 flat config) come from a SAELens 5.x venv::

    .venv-saelens5/bin/pip install "sae-lens<6" "pyarrow<18" torch==2.13.0
    .venv-saelens5/bin/python tests/data/saelens/make_fixtures.py --v5

Run ``--v5`` first: the 6.x run also checks that 6.x loads the 5.x folders.
Committed files were made with sae-lens 6.54.12 and sae-lens 5.11.0, both on
torch 2.13.0+cpu.
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
D_IN, D_SAE, N, K = 6, 10, 5, 3
META = {"model_name": "tiny-model", "hook_name": "blocks.0.hook_resid_pre"}


def main() -> None:
    import torch

    def randomize(sae, seed, dtype):
        """Fill every parameter with seeded random values; return a matching x."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in sorted(sae.named_parameters()):
                if name == "threshold":
                    v = 0.8 * torch.rand(p.shape, generator=g)
                elif name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                    # W_dec rows get norms around 1.2, not 1.
                    scale = 0.5 if name.startswith("W") else 0.3
                    v = scale * torch.randn(p.shape, generator=g)
                else:
                    raise ValueError(f"unexpected parameter {name}")
                p.copy_(v)
        # x exactly representable in the SAE dtype, so loaders see the same input.
        return torch.randn(N, D_IN, generator=g).to(dtype).float()

    def save(sae, name, x):
        out = HERE / name
        sae.save_model(out)
        with torch.no_grad():
            acts = sae.encode(x)
            recon = sae.decode(acts)
        np.savez(
            out / "io.npz",
            x=x.numpy(),
            feature_acts=acts.float().numpy(),
            recon=recon.float().numpy(),
        )
        print(f"{name}: nonzero acts per row {(acts != 0).sum(-1).tolist()}")

    if "--v5" in sys.argv:
        from sae_lens import SAE, SAEConfig, __version__

        specs = [
            ("standard_v5_f32", "standard", "relu", {}),
            ("jumprelu_v5_f32", "jumprelu", "relu", {}),
            ("topk_v5_f32", "topk", "topk", {"k": K}),
        ]
        for seed, (name, arch, act, kwargs) in enumerate(specs, start=100):
            cfg = SAEConfig(
                architecture=arch,
                d_in=D_IN,
                d_sae=D_SAE,
                activation_fn_str=act,
                activation_fn_kwargs=kwargs,
                apply_b_dec_to_input=True,
                finetuning_scaling_factor=False,
                context_size=128,
                hook_layer=0,
                hook_head_index=None,
                prepend_bos=True,
                dataset_path="tiny-dataset",
                dataset_trust_remote_code=False,
                normalize_activations="none",
                dtype="float32",
                device="cpu",
                sae_lens_training_version=__version__,
                **META,
            )
            sae = SAE(cfg)
            save(sae, name, randomize(sae, seed, torch.float32))
        return

    from sae_lens import (
        SAE,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    specs = [
        ("standard_f32", StandardSAE, StandardSAEConfig, "float32", {}),
        (
            "standard_nobdec_f32",
            StandardSAE,
            StandardSAEConfig,
            "float32",
            {"apply_b_dec_to_input": False},
        ),
        ("jumprelu_f32", JumpReLUSAE, JumpReLUSAEConfig, "float32", {}),
        ("topk_f32", TopKSAE, TopKSAEConfig, "float32", {"k": K}),
        (
            "topk_rescale_f32",
            TopKSAE,
            TopKSAEConfig,
            "float32",
            {"k": K, "rescale_acts_by_decoder_norm": True},
        ),
        ("standard_f16", StandardSAE, StandardSAEConfig, "float16", {}),
        ("jumprelu_bf16", JumpReLUSAE, JumpReLUSAEConfig, "bfloat16", {}),
    ]
    for seed, (name, cls, cfg_cls, dtype, kwargs) in enumerate(specs):
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, dtype=dtype, metadata=SAEMetadata(**META), **kwargs)
        sae = cls(cfg)
        save(sae, name, randomize(sae, seed, getattr(torch, dtype)))

    # Round trip: SAELens must load every folder back (5.x ones included) and
    # reproduce io.npz exactly.
    for folder in sorted(p.parent for p in HERE.glob("*/cfg.json")):
        sae = SAE.load_from_disk(folder)
        io = np.load(folder / "io.npz")
        with torch.no_grad():
            acts = sae.encode(torch.from_numpy(io["x"]))
            recon = sae.decode(acts)
        assert np.array_equal(acts.float().numpy(), io["feature_acts"]), folder
        assert np.array_equal(recon.float().numpy(), io["recon"]), folder
        print(f"reloaded {folder.name} as {type(sae).__name__} {sae.cfg.dtype}")


if __name__ == "__main__":
    main()
