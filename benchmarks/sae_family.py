"""What the SAE bridge costs at the sizes of real SAEs: saving and loading a SAELens directory,
encoding, and ``jaxfeat.sae.feature_family``, on a planted family among d_sae random features.

Usage::

    python benchmarks/sae_family.py             # d_in 512; d_sae 4096, 16384; N 10k, 50k
    python benchmarks/sae_family.py --smoke     # tiny sizes (seconds), results to a temp file

Each case plants three ReLU features of t (tied encoder, distractors with a negative bias, as
trained SAEs have) and records the wall times (cold = first call, with compilation; warm =
second call), whether the planted members were found exactly, and the family's mean KL. Results,
with the machine, go to ``benchmarks/results/sae_family_<backend>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import jaxfeat.sae as js
from jaxfeat.experiments.store import atomic_write_json, environment

REPO = Path(__file__).resolve().parents[1]
TOKENS = np.arange(8)


def planted(d_in: int, d_sae: int, n: int, vocab: int, seed: int = 0):
    """An SAE whose dictionary holds three hinge features of t among random unit directions."""
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    members = rng.choice(d_sae, 3, replace=False)
    W_dec[members] = np.linalg.qr(W_dec[members].T)[0].T  # the planted directions: orthonormal
    t = rng.uniform(-1, 1, n).astype(np.float32)
    acts = np.maximum(np.array([2.0, -1.5, 3.0]) * t[:, None] + np.array([0.5, 0.2, -1.0]), 0)
    x = (acts @ W_dec[members] + 0.01 * rng.normal(size=(n, d_in))).astype(np.float32)
    # A random direction reads about |a| / sqrt(d_in) of the signal: a bias of six times that
    # keeps all but a handful of the d_sae distractors off, as a trained SAE's biases do.
    b_enc = np.full(d_sae, -6.0 * np.linalg.norm(acts, axis=1).max() / np.sqrt(d_in), np.float32)
    b_enc[members] = 0.0
    sae = js.SAE(W_dec.T.copy(), b_enc, W_dec, np.zeros(d_in, np.float32))
    W_U = rng.normal(size=(d_in, vocab)).astype(np.float32)
    reference = np.asarray(jax.nn.softmax(acts @ (W_dec[members] @ W_U[:, TOKENS]), axis=-1))
    return sae, x, t, W_U, reference, np.sort(members)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def run_case(d_in: int, d_sae: int, n: int, vocab: int) -> dict:
    sae, x, t, W_U, reference, members = planted(d_in, d_sae, n, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        _, save_s = timed(lambda: js.save_saelens(sae, tmp))
        loaded, load_s = timed(lambda: js.load_saelens(tmp))
    encode = jax.jit(js.encode)
    _, encode_cold = timed(lambda: encode(loaded, x))
    _, encode_warm = timed(lambda: encode(loaded, x))

    def family():
        return js.feature_family(
            loaded, x, t, W_U, tokens=TOKENS, tol=1e-3, reference=reference, count=False
        )

    fam, family_cold = timed(family)
    fam, family_warm = timed(family)
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "n": n,
        "vocab": vocab,
        "save_s": save_s,
        "load_s": load_s,
        "encode_cold_s": encode_cold,
        "encode_warm_s": encode_warm,
        "encode_rows_per_s": n / encode_warm,
        "family_cold_s": family_cold,
        "family_warm_s": family_warm,
        "members_found_exactly": bool(np.array_equal(np.sort(fam.members), members)),
        "family_size": int(fam.members.size),
        "family_kl": fam.kl,
        "converged": fam.converged,
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, results to a temp file")
    parser.add_argument("--out", type=Path, help="results file")
    args = parser.parse_args(argv)
    if args.smoke:
        cases = [(64, 256, 1000, 32)]
        out = args.out or Path(tempfile.mkdtemp()) / "sae_family_smoke.json"
    else:
        cases = [(512, d_sae, n, 4096) for d_sae in (4096, 16384) for n in (10_000, 50_000)]
        out = (
            args.out or REPO / "benchmarks" / "results" / f"sae_family_{jax.default_backend()}.json"
        )
    rows = []
    for case in cases:
        rows.append(run_case(*case))
        print(json.dumps(rows[-1]), file=sys.stderr)
    atomic_write_json(out, {"environment": environment(), "rows": rows})
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
