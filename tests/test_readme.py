"""The README's SAE example runs as written, on a planted family saved as the user's files."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from jaxfeat import sae as js
from tests.test_family import planted

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(f"## {heading}") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_sae_example_runs_on_a_planted_family(tmp_path, monkeypatch, capsys):
    tokens, vocab = np.array([3, 17, 42]), 50  # the README's tokens
    case = planted(n=600, vocab=vocab, tokens=tokens)
    js.save_saelens(case.sae, tmp_path / "my_sae")
    probs = np.full((case.t.size, vocab), 1e-6)
    probs[:, tokens] = case.reference
    np.savez(tmp_path / "activations.npz", x=case.x, t=case.t, W_U=case.W_U, probs=probs)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_block("Analysing your own SAE"), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    fam = namespace["fam"]
    assert np.array_equal(np.sort(fam.members), case.members) and fam.kl < 1e-4
    # The planted curve is three ReLU features of t: no certificate may exceed three, and the
    # bracket is computed on the family's own reference curve.
    req = fam.required
    assert req.activation == "relu" and req.tol == 1e-3
    assert req.lower_bound <= len(fam.subfamily) == 3
    np.testing.assert_allclose(fam.target.probs, fam.reference, rtol=1e-5, atol=1e-7)
    first = out.splitlines()[0]
    assert set(map(int, re.findall(r"\d+", first[: first.index("]")]))) == set(case.members)
    assert "certified bracket" in out and (tmp_path / "family.svg").stat().st_size > 10_000
