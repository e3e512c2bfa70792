"""The benchmark scripts' smoke runs: each ``main(["--smoke", ...])`` in-process, outputs checked.

The scripts live outside the package (``benchmarks/``), so they are loaded from their files. A
smoke run uses tiny sizes; nearly all of its time is compiling the fits (one compile per shape,
shared by every section that uses it).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import jaxfeat

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


throughput = _load("throughput")
plot_throughput = _load("plot_throughput")
feature_count = _load("feature_count")
sae_family = _load("sae_family")


def _numbers(x, path: str = ""):
    """(path, value) of every number in a JSON document."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(x, int | float) and not isinstance(x, bool):
        yield path, x


def _assert_all_finite(doc) -> None:
    bad = [p for p, v in _numbers(doc) if not math.isfinite(v)]
    assert not bad, f"non-finite numbers at {bad[:10]}"


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


@pytest.fixture(scope="module")
def throughput_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "smoke.json"
    assert throughput.main(["--smoke", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# throughput.py


def test_throughput_smoke_writes_every_section(throughput_results):
    res = json.loads(throughput_results.read_text())
    assert not list(throughput_results.parent.glob("*.tmp"))  # written atomically
    _assert_all_finite(res)
    env = res["environment"]
    for key in (
        "jax",
        "jaxlib",
        "optax",
        "scipy",
        "jaxfeat",
        "backend",
        "device_kind",
        "cpu_count",
        "platform",
        "date_utc",
        "load_average_start",
        "load_average_end",
    ):
        assert env[key] is not None, key
    settings = res["settings"]
    assert settings["mode"] == "smoke" and not settings["quick"]
    assert settings["config"] == throughput.config("smoke")
    assert settings["solver_settings"]["window"] == throughput.WINDOW
    for s in throughput.SECTIONS:
        assert res[s]["section_wall_s"] > 0, s
    assert res["total_wall_s"] >= sum(res[s]["section_wall_s"] for s in throughput.SECTIONS) - 1e-9
    assert set(res["goals"]) == {"scipy_lbfgsb", "optax_lbfgs"}


def test_throughput_smoke_methods_and_comparisons(throughput_results):
    res = json.loads(throughput_results.read_text())
    cfg = res["settings"]["config"]
    single, batch = res["single"], res["batch"]
    assert set(single["methods"]) == {
        "jaxfeat",
        "optax_lbfgs",
        "scipy_lbfgsb",
        "scipy_lbfgsb_random_init",
    }
    for section, n in ((single, 1), (batch, cfg["batch_size"])):
        jf = section["methods"]["jaxfeat"]["budgets"][-1]
        assert jf["max_steps"] == cfg["max_steps"] and len(jf["loss_per_target"]) == n
        assert jf["loss"] > 0 and jf["warm_s"] > 0 and jf["first_s"] >= jf["warm_s"] / 10
        assert jf["xla_total_bytes"] > 0  # from the call compiled as one program
    sp = batch["methods"]["scipy_lbfgsb"]
    assert len(sp["subset"]) == cfg["scipy_subset"]
    assert [c["iterations"] for c in sp["curve"]] == cfg["scipy_iters"]
    assert sp["loss"] > 0 and sp["extrapolated_warm_s"] > sp["warm_s"]
    ox = batch["methods"]["optax_lbfgs"]
    assert [b["steps"] for b in ox["budgets"]] == cfg["optax_budgets_batch"]
    assert sorted(ox["subset_runs"], key=int) == [str(m) for m in cfg["optax_subsets"]]
    for name in ("scipy_lbfgsb", "optax_lbfgs"):
        cmp = batch["comparison"][name]
        assert cmp["reference_loss"] > 0 and name in cmp["jaxfeat_vs"]
        assert _finite(cmp["jaxfeat_vs"][name]["baseline_time_s"])
    ks = res["ks"]
    assert len(ks["jaxfeat_fit_ks"]["loss_per_k"]) == len(ks["ks"])
    for name in ("jaxfeat_fit_per_k", "scipy_lbfgsb", "optax_lbfgs"):
        assert ks[name]["fit_ks_speedup_warm"] > 0
        assert set(ks[name]["per_k"]) == {str(k) for k in cfg["ks_baseline"]}


def test_throughput_smoke_scaling_and_breakdown(throughput_results):
    res = json.loads(throughput_results.read_text())
    cfg = res["settings"]["config"]
    sc = res["scaling"]
    for name, values in cfg["scaling"].items():
        points = sc[name]["points"]
        assert [p["value"] for p in points] == values
        for p in points:
            assert p["warm_s"] > 0 and p["xla_total_bytes"] > 0 and p["loss"] > 0
    assert any(p.get("reused") == "batch section" for p in sc["batch_size"]["points"])
    assert _finite(sc["batch_size"]["time_slope_all"])
    assert sc["lm_max_params"] == throughput.SOLVER.lm_max_params
    brk = res["breakdown"]
    assert 1 <= brk["lanes"] <= cfg["breakdown_size"] * cfg["restarts"]
    assert set(brk["seconds_per_member"]) == {
        "lm_step_in_fit",
        "loss",
        "value_and_grad",
        "cholesky_factor_and_solve",
        "optax_lbfgs_step",
    }
    assert all(_finite(v) for v in brk["seconds_per_member"].values())
    assert brk["seconds_per_member"]["loss"] > 0
    fixed = brk["fixed_step_fits"]
    assert fixed["budgets"] == cfg["breakdown_budgets"]
    assert fixed["steps_per_member"][0] < fixed["steps_per_member"][1]
    assert all(t > 0 for t in fixed["warm_s"])
    assert brk["fit_batch_jit_compile_s"] > 0 and brk["fit_batch_jit_warm_s"] > 0
    assert brk["xla_total_bytes"] > 0
    assert set(brk["lm_step_fractions"]) == {
        "model_evaluation",
        "cholesky_factor_and_solve",
        "gradient_ggn_assembly_and_queue",
    }


def test_throughput_starting_points_are_jaxfeat_starts():
    # Same shapes as the smoke run's single target, so nothing new compiles.
    cfg = throughput.config("smoke")
    tgt = jaxfeat.targets.oscillating(2, n=cfg["T"])
    t, probs = np.asarray(tgt.t), np.asarray(tgt.probs)[None]
    start = throughput.jaxfeat_start(t, probs, cfg["k"], cfg["restarts"])
    R = cfg["restarts"]
    assert start.l.shape == (1, R, cfg["k"], 3) and start.c.shape == (1, R, 3)
    knots = -np.asarray(start.b) / np.asarray(start.w)
    assert np.all((knots >= t[0] - 1e-5) & (knots <= t[-1] + 1e-5))
    # Restart 0 is jaxfeat's own first start: a linear term (knot at the grid's start).
    assert np.isclose(knots[0, 0].min(), t[0], atol=1e-5)
    assert np.all(np.isfinite(throughput.mean_kl64(start, t, probs[:, None])))


def test_throughput_growth_laws_split_at_the_optimiser_switch():
    lm = throughput.SOLVER.lm_max_params
    V_switch = (lm - 8) / 9
    values = [3, 10, int(V_switch) + 10, 4 * int(V_switch)]
    points = [{"value": v, "warm_s": 0.01 * v, "xla_total_bytes": 1000 * v**2} for v in values]
    points.append({"value": 10**5, "skipped": "cap"})
    out = throughput.growth_laws("V", points)
    assert out["time_slope_all"] == pytest.approx(1.0)
    assert out["memory_slope_upper_half"] == pytest.approx(2.0)
    assert out["time_slope_gauss_newton"] == pytest.approx(1.0)
    assert out["memory_slope_lbfgs"] == pytest.approx(2.0)
    assert "time_slope_lbfgs" not in throughput.growth_laws("V", points[:2])


def test_throughput_rejects_unknown_sections(tmp_path):
    with pytest.raises(SystemExit):
        throughput.main(["--smoke", "--out", str(tmp_path / "x.json"), "--sections", "nope"])
    with pytest.raises(SystemExit):
        throughput.main(["--smoke", "--quick", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_throughput_smoke_default_output_is_outside_the_repository():
    assert ROOT not in throughput.default_out("smoke").resolve().parents


# ---------------------------------------------------------------------------------------------
# plot_throughput.py


def test_plot_throughput_smoke(throughput_results, tmp_path):
    assert (
        plot_throughput.main(
            ["--smoke", "--results", str(throughput_results), "--out", str(tmp_path)]
        )
        == 0
    )
    for name in ("throughput_batch.png", "throughput_scaling.png"):
        _assert_png(tmp_path / name)


def test_plot_throughput_reads_the_committed_results(tmp_path):
    committed = BENCHMARKS / "results" / "throughput_cpu.json"
    if not committed.exists():
        pytest.skip("no committed throughput results")
    assert (
        plot_throughput.main(["--smoke", "--results", str(committed), "--out", str(tmp_path)]) == 0
    )
    for name in ("throughput_batch.png", "throughput_scaling.png"):
        _assert_png(tmp_path / name)


# ---------------------------------------------------------------------------------------------
# feature_count.py


def test_feature_count_smoke(tmp_path, capsys):
    # Two sweeps with real fits: a count sweep and the seed fits (every sweep's rows and figures
    # are checked on a stand-in counter in tests/experiments/test_sweeps.py).
    out, figures = tmp_path / "results", tmp_path / "figures"
    chosen = ["oscillations", "seed_fits"]
    args = ["--smoke", "--sweeps", *chosen, "--out", str(out), "--figures", str(figures)]
    assert feature_count.main([*args, "--quiet"]) == 0
    sweeps = feature_count.sweeps
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(chosen)
    for sweep in chosen:
        doc = json.loads((out / f"{sweep}.json").read_text())
        _assert_all_finite(doc)
        assert doc["sweep"] == sweep and doc["rows"], sweep
        assert doc["environment"]["jax"] and doc["environment"]["backend"]
        assert doc["config"] == feature_count.SMOKE.fit_config(sweep)
        assert len(doc["rows"]) == len(sweeps.jobs(sweep, feature_count.SMOKE))
        for row in doc["rows"]:
            if sweep == "seed_fits":
                assert row["k"] in feature_count.SMOKE.fit_ks and row["mean_kl"] >= 0
                assert len(row["params"]["l"]) == row["k"]
            else:
                assert row["k"] is None or row["lower_bound"] <= row["k"] <= row["k_max"]
                assert row["lower_bound"] >= 1 and len(row["losses"]) == row["k_max"]
    pngs = sorted(figures.glob("*.png"))
    assert len(pngs) == 5  # oscillations, and the four drawn from the seed fits
    assert {p.name for p in pngs} <= set(feature_count.plots.FIGURES.values())
    for path in pngs:
        _assert_png(path)
    text = capsys.readouterr().out
    assert f"results: {out}" in text and "wall time" in text


def test_sae_family_smoke(tmp_path):
    out = sae_family.main(["--smoke", "--out", str(tmp_path / "sae.json")])
    doc = json.loads(out.read_text())
    _assert_all_finite(doc)
    assert {"jax", "backend", "device"} <= set(doc["environment"])
    (row,) = doc["rows"]
    assert row["members_found_exactly"] and row["family_size"] == 3 and row["converged"]
    assert row["family_kl"] < 1e-4 and row["family_warm_s"] > 0


def test_toy_models_script_runs_the_experiment_sweeps(monkeypatch):
    # The sweeps themselves are tested in tests/experiments/test_toy_models.py (smoke run).
    script = _load("toy_models")
    calls = []
    monkeypatch.setattr(script, "run", lambda argv, repo: calls.append((argv, repo)) or repo)
    assert script.main(["--smoke"]) == ROOT
    assert calls == [(["--smoke"], ROOT)]
