"""The benchmark scripts' smoke runs: each ``main(["--smoke", ...])`` in-process, outputs checked.

The scripts live outside the package (``benchmarks/``), so they are loaded from their files. A
smoke run uses tiny sizes; nearly all of its time is compiling the fits (one compile per shape,
shared by every section that uses it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
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
    assert set(res["goals"]) == {
        "scipy_lbfgsb",
        "optax_lbfgs",
        "large_vocab_quality",
        "large_vocab_bound",
        "large_vocab_bound_at_k",
        "large_vocab_growth",
    }


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
    assert out["time_slope_cg"] == pytest.approx(1.0)
    assert out["memory_slope_cg"] == pytest.approx(2.0)
    assert not any("lbfgs" in key for key in out)
    assert "time_slope_cg" not in throughput.growth_laws("V", points[:2])


def test_throughput_smoke_large_vocab(throughput_results):
    res = json.loads(throughput_results.read_text())
    cfg = res["settings"]["config"]["large_vocab"]
    lv = res["large_vocab"]
    assert {
        "quality",
        "growth",
        "old_paths",
        "reference",
        "bound",
        "bound_at_k",
        "bucket_tightness",
        "path_rule",
        "notes",
    } <= set(lv)
    k, R, M = cfg["k"], cfg["restarts"], cfg["max_steps"]
    assert (lv["k"], lv["restarts"], lv["max_steps"], lv["T"]) == (k, R, M, cfg["T"])
    lm = throughput.SOLVER.lm_max_params
    assert lv["lm_max_params"] == lm

    # Default fits: every point run, on the path the parameter count gives, both paths covered.
    quality = lv["quality"]
    assert list(quality) == [str(V) for V in cfg["quality_V"]]
    for V, q in quality.items():
        assert "skipped" not in q, V
        assert q["V"] == int(V) and q["n_params"] == (k + 1) * int(V) + k
        assert q["path"] == ("dense" if q["n_params"] <= lm else "cg")
        assert (q["restarts"], q["max_steps"]) == (R, M)
        assert q["mean_kl64"] > 0 and q["mean_kl"] == pytest.approx(q["mean_kl64"], rel=1e-3)
        assert isinstance(q["converged"], bool) and 1 <= q["num_steps"]
        assert q["warm_s"] > 0 and q["seconds_per_target"] == q["warm_s"]
        assert q["first_s"] >= q["compile_s"] >= 0
        top = cfg["xla_memory_max_V"]
        if top is None or int(V) <= top:
            assert q["xla_total_bytes"] > 0 and q["xla_compile_s"] > 0
    assert {q["path"] for q in quality.values()} == {"dense", "cg"}
    growth = lv["growth"]
    assert _finite(growth["time_slope_all"])
    assert growth["V_all"] == cfg["quality_V"]
    assert growth["V_cg"] == [q["V"] for q in quality.values() if q["path"] == "cg"]
    assert growth["required_max_time_slope"] == throughput.LV_MAX_SLOPE

    # Old paths, with their ratios to the default fit.
    old = lv["old_paths"]
    for name in ("lbfgs", "dense"):
        assert list(old[name]) == [str(V) for V in cfg[f"{name}_V"]], name
        for rec in old[name].values():
            assert rec["mean_kl64"] > 0 and rec["warm_s"] > 0
            ratio = rec[f"default_over_{name}_mean_kl"]
            assert _finite(ratio) and _finite(rec[f"{name}_over_default_warm_s"])
            if name == "dense" and rec["default_path"] == "dense":
                assert ratio == pytest.approx(1.0)  # the default fit is this one

    # Long dense runs: with the smoke sizes the first one is the default fit itself.
    ref = lv["reference"]
    assert ref["V"] == cfg["reference_V"] and ref["max_steps"] == cfg["reference_max_steps"]
    runs = ref["runs"]
    assert list(runs) == [f"restarts_{r}_key_{key}" for r, key in cfg["reference_runs"]]
    assert all(run["mean_kl64"] > 0 for run in runs.values())
    assert ref["best_long_dense_mean_kl"] == min(run["mean_kl64"] for run in runs.values())
    assert ref["default_over_best_long_dense"] == pytest.approx(
        ref["default_mean_kl"] / ref["best_long_dense_mean_kl"]
    )
    assert _finite(ref["default_over_long_dense_same_restarts"])
    if cfg["reference_max_steps"] == M:
        assert ref["default_over_long_dense_same_restarts"] == pytest.approx(1.0)
    assert isinstance(ref["met"], bool)

    # The certified bound is non-zero and below every fit.
    bound = lv["bound"]
    assert list(bound) == [str(V) for V in cfg["bound_V"]]
    for V, b in bound.items():
        assert list(b["per_k"]) == [str(kk) for kk in cfg["bound_ks"]]
        assert b["seconds"] > 0 and b["all_nonzero"]
        assert 2 <= b["tokens_kept"] <= int(V)
        if int(V) > jaxfeat.bounds.AUTO_BUCKET_VOCAB:
            assert b["buckets"] == -(-b["tokens_kept"] // jaxfeat.bounds.AUTO_BUCKET_SIZE)
        else:
            assert b["buckets"] == 1 and b["tokens_kept"] == int(V)
        assert 0 < b["kept_mass_mean"] <= 1 + 1e-6  # float32 rows
        for row in b["per_k"].values():
            assert row["bound"] > 0 and row["fit_over_bound"] >= 1 - 1e-9
        assert b["max_fit_over_bound"] == max(r["fit_over_bound"] for r in b["per_k"].values())
    at_k = lv["bound_at_k"]
    assert at_k["k"] == cfg["bound_k"]
    assert list(at_k["points"]) == [str(V) for V in cfg["bound_k_V"]]
    for V, point in at_k["points"].items():
        assert point["fit_mean_kl"] == quality[V]["mean_kl64"]
        assert point["bound"] > 0 and point["fit_over_bound"] >= 1 - 1e-9

    # Round-robin buckets give a weaker bound than one bucket; as weak only with one bucket.
    tight = lv["bucket_tightness"]
    assert list(tight) == [str(V) for V in cfg["tightness_V"]]
    for V, rec in tight.items():
        assert set(rec["exact"]) == {str(kk) for kk in cfg["tightness_ks"]}
        assert all(v > 0 for v in rec["exact"].values())
        # A bucket size of V or more is one bucket, the exact bound itself: not re-measured.
        sizes = [str(s) for s in cfg["tightness_sizes"] if s < int(V)]
        assert list(rec["bucketed_over_exact"]) == sizes
        for ratios in rec["bucketed_over_exact"].values():
            assert all(0 < r <= 1 + 1e-9 for r in ratios.values())

    goals = res["goals"]
    assert goals["large_vocab_growth"]["time_slope_all"] == growth["time_slope_all"]
    assert (
        goals["large_vocab_quality"]["default_over_best_long_dense"]
        == (ref["default_over_best_long_dense"])
    )
    assert goals["large_vocab_bound"]["max_fit_over_bound"] == max(
        b["max_fit_over_bound"] for b in bound.values()
    )
    assert set(goals["large_vocab_bound_at_k"]["fit_over_bound"]) == set(at_k["points"])
    assert all(isinstance(g["met"], bool) for g in goals.values())


def test_throughput_large_vocab_paths_and_growth():
    assert throughput._lv_params(30, 8) == (278, "dense")
    assert throughput._lv_params(100, 8) == (908, "cg")
    assert throughput._dense_options(30, 8) == {}  # the default fit is already dense there
    assert throughput._dense_options(100, 8)["solver"].lm_max_params >= 10**9
    quality = {
        str(V): {"V": V, "path": path, "seconds_per_target": 0.01 * V, "xla_total_bytes": V**2}
        for V, path in ((30, "dense"), (100, "cg"), (300, "cg"), (1000, "cg"))
    }
    quality["3000"] = {"V": 3000, "path": "cg", "skipped": "cap"}
    out = throughput.large_vocab_growth(quality)
    assert out["time_slope_all"] == pytest.approx(1.0)
    assert out["time_slope_cg"] == pytest.approx(1.0)
    assert out["memory_slope_cg"] == pytest.approx(2.0)
    assert out["time_slope_dense"] is None  # one point
    assert out["V_all"] == [30, 100, 300, 1000] and out["V_cg"] == [100, 300, 1000]


def test_throughput_skips_points_after_one_over_the_cap():
    assert throughput._skip_reason([{"first_s": 5.0}], 10.0) is None
    assert "10.0 s" in throughput._skip_reason([{"first_s": 5.0}, {"first_s": 11.0}], 10.0)
    assert throughput._skip_reason([{"first_s": 11.0, "skipped": "cap"}], 10.0) is None
    assert throughput._skip_reason([{"seconds": 11.0}], 10.0, "seconds")
    caps = {"bound": 100.0, "bound_predicted": 300.0}
    ran = [{"V": 100, "seconds": 20.0}, {"V": 1000, "seconds": 50.0}]
    assert throughput._bound_skip_reason(ran, 3000, caps) is None  # predicted 150 s
    assert "predicted 500 s" in throughput._bound_skip_reason(ran, 10000, caps)
    assert throughput._bound_skip_reason([], 10**6, caps) is None


def test_throughput_resume_keeps_every_section_already_written(throughput_results, tmp_path):
    # Resuming a run of one section keeps the others (asked for or not) and runs only it.
    res = json.loads(throughput_results.read_text())
    del res["ks"]
    out = tmp_path / "resume.json"
    out.write_text(json.dumps(res))
    assert throughput.main(["--smoke", "--out", str(out), "--resume", "--sections", "ks"]) == 0
    new = json.loads(out.read_text())
    for s in throughput.SECTIONS:
        if s != "ks":
            assert new[s] == res[s], s
    assert new["ks"]["section_wall_s"] > 0
    assert set(new["goals"]) == set(res["goals"])


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
    plots = feature_count.plots
    assert {p.name for p in pngs} <= {plots.figure_name(f, "smoke") for f in plots.FIGURES}
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


scaling = _load("scaling")


def test_scaling_smoke_into_an_existing_results_file(tmp_path):
    # What benchmarks/gpu_check.sh runs after the throughput sections, on tiny sizes; the
    # processes section's job machinery is tested in tests/test_distributed.py.
    out = tmp_path / "throughput_gpu.json"
    out.write_text(json.dumps({"environment": {"kept": True}}))
    sections = "lanes,fits_per_minute,large_vocab,memory"
    assert scaling.main(["--smoke", "--sections", sections, "--into", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["environment"] == {"kept": True}
    s = doc["scaling"]
    assert s["environment"]["process_count"] == 1 and s["mode"] == "smoke"
    lanes = s["lanes"]
    assert lanes["best"] in [r[lanes["field"]] for r in lanes["rows"]]
    assert all(r["fits_per_minute"] > 0 for r in lanes["rows"])
    fpm = s["fits_per_minute"]
    assert fpm["fits_per_minute"] > 0 and fpm["batch"] == 8
    lv = s["large_vocab"]
    assert lv["fit"]["V"] == 200 and lv["warm_s"] > 0
    assert lv["speedup_over_cpu"] is None  # no committed CPU point at V = 200
    rows = s["memory"]["rows"]
    assert [r["targets"] for r in rows] == [8, 64]
    # 64 targets over a budget of a few targets: several chunks of one compiled shape.
    assert rows[1]["chunks"] > 1 and rows[1]["chunk_targets"] < 64
    assert all(r["peak_rss_bytes"] > r["input_bytes"] for r in rows)


def test_gpu_check_script_names_what_exists():
    # The script's sections, test nodes and options must exist, so that a GPU run does not fail
    # on a typo after minutes of work.
    text = (BENCHMARKS / "gpu_check.sh").read_text()
    for node in re.findall(r"(tests/\S+\.py)(?:::(\w+))?", text):
        path, name = ROOT / node[0], node[1]
        assert path.exists(), node
        assert not name or f"def {name}(" in path.read_text(), node
    sections = re.search(r"throughput\.py .*--sections (\S+)", text).group(1).split(",")
    assert set(sections) <= set(throughput.SECTIONS)
    sections = re.search(r"scaling\.py .*--sections (\S+)", text).group(1).split(",")
    assert set(sections) <= set(scaling.SECTIONS)
    out = subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_check.sh")], capture_output=True)
    assert out.returncode == 0, out.stderr
