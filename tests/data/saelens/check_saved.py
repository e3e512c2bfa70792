"""Check that SAELens itself reads what ``jaxfeat.sae.save_saelens`` writes.

Two steps in two environments (SAELens needs torch, which jaxfeat never depends on)::

    python tests/data/saelens/check_saved.py write OUT          # the project's venv
    .venv-saelens/bin/python tests/data/saelens/check_saved.py read OUT    # pip install sae-lens

``write`` saves tiny SAEs of every architecture and dtype with jaxfeat, each with an ``io.npz`` of
jaxfeat's own encode and decode outputs; ``read`` loads each directory with SAELens's
``SAE.load_from_disk``, compares, and prints one line per directory (SAELens 5 refuses the
rescaled TopK directory by design; see ``save_saelens``).
"""

import sys
from pathlib import Path

import numpy as np

CASES = {
    "standard": ("standard", {}),
    "standard_nobdec": ("standard", {"apply_b_dec_to_input": False}),
    "jumprelu": ("jumprelu", {}),
    "topk": ("topk", {"k": 3}),
    "topk_rescale": ("topk", {"k": 3, "rescale_acts_by_decoder_norm": True}),
}
META = {"model_name": "tiny", "hook_name": "blocks.0.hook_mlp_out"}


def write(out: Path) -> None:
    import jax.numpy as jnp
    import ml_dtypes

    from jaxfeat import sae as js

    for seed, (name, (arch, static)) in enumerate(CASES.items()):
        rng = np.random.default_rng(seed)
        sae = js.SAE(
            rng.normal(size=(6, 10)).astype(np.float32),
            0.3 * rng.normal(size=10).astype(np.float32),
            (rng.normal(size=(10, 6)) * rng.uniform(0.2, 3, (10, 1))).astype(np.float32),
            0.5 * rng.normal(size=6).astype(np.float32),
            rng.uniform(0, 0.8, 10).astype(np.float32) if arch == "jumprelu" else None,
            architecture=arch,
            **static,
        )
        dtypes = ["float32"] + (["float16", "bfloat16"] if arch != "topk" else [])
        for dtype in dtypes:
            folder = out / f"{name}_{dtype}"
            js.save_saelens(sae, folder, dtype=dtype, metadata=META)
            loaded = js.load_saelens(folder, dtype=dtype)
            half = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(dtype, np.float32)
            x = rng.normal(size=(5, 6)).astype(half)
            f = js.encode(loaded, jnp.asarray(x))
            np.savez(
                folder / "io.npz",
                x=x.astype(np.float32),
                feature_acts=np.asarray(f, np.float32),
                recon=np.asarray(js.decode(loaded, f), np.float32),
            )
    print(f"wrote {len(list(out.glob('*/cfg.json')))} directories to {out}")


def read(out: Path) -> None:
    import torch
    from sae_lens import SAE, __version__

    print(f"sae_lens {__version__}")
    for folder in sorted(p.parent for p in out.glob("*/cfg.json")):
        io = np.load(folder / "io.npz")
        try:
            sae = SAE.load_from_disk(str(folder))
        except Exception as err:  # report every directory, refused ones included
            print(f"{folder.name:24s} refused: {type(err).__name__}: {err}")
            continue
        with torch.no_grad():
            x = torch.tensor(io["x"]).to(sae.dtype)
            f = sae.encode(x)
            recon = sae.decode(f)
        d_f = np.abs(f.float().numpy() - io["feature_acts"]).max()
        d_x = np.abs(recon.float().numpy() - io["recon"]).max()
        hook = getattr(getattr(sae.cfg, "metadata", sae.cfg), "hook_name", None)
        print(
            f"{folder.name:24s} {type(sae).__name__:12s} |d encode| {d_f:.1e}  "
            f"|d decode| {d_x:.1e}  hook_name={hook}"
        )


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](Path(sys.argv[2]))
