"""The trained-toy-model sweeps (jaxfeat.experiments.toy_models) on tiny sizes: every sweep,
figure and the resume path, and the exactness bound on every one-layer MLP-only row."""

from __future__ import annotations

import json

import pytest

from jaxfeat.experiments import toy_models
from jaxfeat.experiments.store import Processes
from jaxfeat.experiments.toy_models import main


def _process(index: int) -> Processes:
    return Processes(index, 3, barrier=lambda name: None)


def _assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_toy_models_smoke(tmp_path, monkeypatch):
    trained = []
    train = toy_models.toy.train
    monkeypatch.setattr(
        toy_models.toy, "train", lambda *a, **k: trained.append(k) or train(*a, **k)
    )
    # Two claim-taking workers (processes 1 and 2 of jaxfeat reproduce's job): worker 2 is
    # interrupted before its last sweep, worker 1 takes what is left, process 0 merges.
    out, claims = tmp_path / "res", tmp_path / "claims"
    last_sweep = toy_models.training_length

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy_models, "training_length", interrupted)
    with pytest.raises(KeyboardInterrupt):
        toy_models.compute(toy_models.SMOKE, out, processes=_process(2), claims=claims)
    monkeypatch.setattr(toy_models, "training_length", last_sweep)
    before = len(trained)
    toy_models.compute(toy_models.SMOKE, out, processes=_process(1), claims=claims)
    assert len(trained) == before + len(toy_models.SMOKE.targets)  # training_length only
    toy_models.compute(toy_models.SMOKE, out, processes=_process(0), claims=claims)
    assert not list(out.glob("*.process-*.json"))
    # The command line resumes the merged run: it trains nothing and draws the figures.
    before = len(trained)
    assert main(["--smoke", "--out", str(out), "--figures", str(tmp_path)]) == out
    assert len(trained) == before
    for sweep in toy_models.SWEEPS:
        doc = json.loads((out / f"{sweep}.json").read_text())
        assert doc["rows"], sweep
    neurons = json.loads((out / "neurons.json").read_text())["rows"]
    one_layer = [r for r in neurons if r["n_layers"] == 1 and r["latent"] == "linear"]
    # A one-layer MLP-only model is a d_mlp + 1 feature model: never below the certified bound,
    # and neither is jaxfeat's fit to the curve or to the corpus's counts.
    for field in ("trained_kl", "fit_kl", "data_fit_kl"):
        assert all(r[field] >= r["bound_kl"] - 1e-6 for r in one_layer), field
    ablations = json.loads((out / "ablations.json").read_text())["rows"]
    assert {(r["attention"], r["layernorm"]) for r in ablations} == {
        (False, False),
        (True, False),
        (False, True),
    }
    families = json.loads((out / "families.json").read_text())["rows"]
    # Each model is trained once, by one worker; the plain ablation model is the neurons
    # sweep's model of that width, trained once by the worker that holds it.
    models = {(r["target"], r["seed"]) for r in families}
    plain = [r for r in ablations if not r["attention"] and not r["layernorm"]]
    lengths = json.loads((out / "training_length.json").read_text())["rows"]
    rows = len(neurons) + len(models) + len(ablations) + len(lengths)
    assert len(trained) == rows - len(plain) and len(plain) == 1 and not toy_models._SHARED
    assert {r["sae"] for r in families} == {"standard", "topk", "jumprelu"}
    assert all(r["sae_kl"] >= 0 and 0 <= r["sae_alive"] <= r["d_sae"] for r in families)
    for stem in ("trained_vs_bracket", "family_vs_required", "family"):
        _assert_png(tmp_path / toy_models.figure_name(toy_models.SMOKE, stem))
    # The example family is redrawn from its saved model and SAE alone.
    example = json.loads((out / toy_models.EXAMPLE_RECORD).read_text())
    assert example["id"] in {r["id"] for r in families}
    toy_models.figures(toy_models.SMOKE, out, tmp_path / "again")
    _assert_png(tmp_path / "again" / toy_models.figure_name(toy_models.SMOKE, "family"))


def test_compare_counts_agreeing_new_and_missing_rows(tmp_path):
    from jaxfeat.experiments.store import ResultsStore

    def write(folder, rows):
        store = ResultsStore(folder / "families.json", "families", record_environment=False)
        store.add_many(rows)

    base = {"family_size": 5, "required_k": 4, "family_kl": 1e-3}
    write(tmp_path / "ref", [{"id": "a", **base}, {"id": "b", **base}, {"id": "gone", **base}])
    write(
        tmp_path / "run",
        [
            {"id": "a", **base, "family_kl": 1.05e-3},  # within 10%: agrees
            {"id": "b", **base, "family_size": 6},  # a different count: disagrees
            {"id": "new", **base},
        ],
    )
    text = toy_models.compare(tmp_path / "ref", tmp_path / "run")
    assert "families: 3 rows, 1 agree, 1 new, 1 missing" in text
    assert "neurons: 0 rows, 0 agree, 0 new, 0 missing" in text
