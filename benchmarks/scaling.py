"""Scale-out of the fitting engine: processes, batch size, lanes.

Sections (workload: ``random_smooth`` targets with bandwidths 1..4, V = 3, k = 8, 16 restarts,
T = 256, unless a section says otherwise):

* ``processes``: one batch of targets fitted by a job of 1, 2 and 4 processes on this machine
  (``jax.distributed`` on 127.0.0.1, :class:`jaxfeat.experiments.launch.LocalJob`); throughput
  of the warm call and the scaling efficiency ``throughput(P) / (P * throughput(1))``. Every
  process computes its share and gathers all results, which are checked equal to the
  one-process run's. On a machine with fewer cores than processes the processes share them.
* ``memory``: peak resident memory of one :func:`jaxfeat.fit_batch` call against the batch
  size, up to 10^5 targets, each size in a fresh process (``VmHWM``; on an accelerator also the
  allocator's peak). The batch streams through in chunks, so what grows with B is the inputs
  and outputs themselves; the section reports them beside the peak. It uses a cheap fit
  (T = 64, 2 restarts, a one-step budget after the convex starts) to reach 10^5 targets in
  minutes on a CPU: the chunks' working memory does not depend on the steps.
* ``lanes``: fits per minute against the work queue's lane count (``accelerator_lanes`` on a
  GPU or TPU, ``cpu_lane_bytes`` on a CPU): how the default lane sizing was chosen.
* ``fits_per_minute``: the warm throughput of a large batch at the default settings (10^5
  targets on an accelerator, the issue's goal; fewer on a CPU).
* ``large_vocab``: the large-vocabulary fit (``random_smooth(0, 3, 10000)``, T = 256, k = 8, 8
  restarts), against the committed 2-core CPU time in ``results/throughput_cpu.json`` (on an
  accelerator, or with ``--smoke``; the CPU's own time is ``throughput.py``'s to measure).

Usage::

    python benchmarks/scaling.py [--smoke] [--sections processes,memory,lanes,fits_per_minute]
        [--out PATH] [--into PATH]   (sections: processes,memory,lanes,fits_per_minute,large_vocab)

``--out`` defaults to ``benchmarks/results/scaling_<backend>.json`` (a temporary file with
``--smoke``); ``--into`` adds the results, under ``"scaling"``, to an existing results file
instead (``benchmarks/gpu_check.sh`` puts them into ``throughput_gpu.json``). The file is
rewritten atomically after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxfeat
from jaxfeat.experiments import launch
from jaxfeat.experiments.store import atomic_write_json, environment

SECTIONS = ("processes", "memory", "lanes", "fits_per_minute", "large_vocab")
# The committed CPU run whose V = 10,000 fit the large_vocab section is compared with.
CPU_RESULTS = Path(__file__).resolve().parent / "results" / "throughput_cpu.json"
HERE = Path(__file__).resolve()


def config(mode: str, backend: str) -> dict[str, Any]:
    """Sizes of a run; ``smoke`` checks the code in seconds of work (compilation dominates)."""
    gpu = backend != "cpu"
    if mode == "smoke":
        return {
            "fit": {"k": 2, "T": 32, "restarts": 2, "max_steps": 10},
            "processes": [1, 2],
            "processes_batch": 4,
            "memory_fit": {"k": 2, "T": 32, "restarts": 2, "max_steps": 1},
            "memory_batches": [8, 64],
            "memory_chunk_bytes": 2**16,
            "lanes_batch": 4,
            "lanes": [2**13, 2**16] if gpu else [2**14, 2**21],
            "fpm_batch": 8,
            "vocab": {"V": 200, "k": 2, "T": 32, "restarts": 2, "max_steps": 10},
        }
    return {
        "fit": {"k": 8, "T": 256, "restarts": 16, "max_steps": 200},
        "processes": [1, 2, 4],
        "processes_batch": 128,
        "memory_fit": {"k": 8, "T": 64, "restarts": 2, "max_steps": 1},
        "memory_batches": [10**3, 10**4, 10**5] if gpu else [10**3, 10**4, 3 * 10**4, 10**5],
        "memory_chunk_bytes": None,  # the default budget
        "lanes_batch": 8192 if gpu else 64,
        "lanes": [2**14, 2**16, 2**17] if gpu else [2**19, 2**20, 2**21, 2**22, 2**23],
        "fpm_batch": 10**5 if gpu else 512,
        # The large-vocabulary issue's fit (throughput.py's large_vocab section).
        "vocab": {"V": 10_000, "k": 8, "T": 256, "restarts": 8, "max_steps": 200},
    }


def batch(n: int, T: int, V: int = 3, distinct: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n targets: ``distinct`` random_smooth curves (bandwidths 1..4), repeated to n."""
    m = min(n, distinct)
    keys = jax.random.split(jax.random.key(0), m)
    tg = [jaxfeat.targets.random_smooth(keys[i], 1 + i % 4, V, n=T) for i in range(m)]
    probs = np.stack([np.asarray(x.probs) for x in tg])
    return np.asarray(tg[0].t), probs[np.arange(n) % m]


def timed_fit(t, probs, fit: dict, solver=None, repeat: bool = True) -> dict[str, Any]:
    """A first call (compiles) and a warm repeat, both to block_until_ready."""
    kw = dict(restarts=fit["restarts"], max_steps=fit["max_steps"], solver=solver, progress=False)
    out = {}
    for name in ("first_s", "warm_s") if repeat else ("first_s",):
        start = time.perf_counter()
        res = jaxfeat.fit_batch(t, probs, fit["k"], **kw)
        jax.block_until_ready(res)
        out[name] = time.perf_counter() - start
    out["median_mean_kl"] = float(np.median(np.asarray(res.mean_kl)))
    out["converged_fraction"] = float(np.mean(np.asarray(res.converged)))
    out["_result"] = res
    return out


def log(msg: str) -> None:
    print(f"[scaling] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Workers: one process of a job, or one batch size in a fresh process


def worker_processes(args: argparse.Namespace) -> None:
    procs = launch.start_distributed(args)
    cfg = json.loads(args.config)
    t, probs = batch(cfg["processes_batch"], cfg["fit"]["T"])
    out = timed_fit(t, probs, cfg["fit"])
    res = out.pop("_result")
    if procs.index == 0:
        np.save(Path(args.result).with_suffix(".npy"), np.asarray(res.restart_losses))
        Path(args.result).write_text(json.dumps({**out, "processes": procs.count}))


def worker_memory(args: argparse.Namespace) -> None:
    cfg = json.loads(args.config)
    fit = cfg["memory_fit"]
    t, probs = batch(args.batch, fit["T"])
    solver = None
    if cfg["memory_chunk_bytes"]:
        solver = jaxfeat.SolverSettings(chunk_bytes=cfg["memory_chunk_bytes"])
    start = time.perf_counter()
    res = jaxfeat.fit_batch(
        t,
        probs,
        fit["k"],
        restarts=fit["restarts"],
        max_steps=fit["max_steps"],
        solver=solver,
        progress=False,
    )
    jax.block_until_ready(res)
    seconds = time.perf_counter() - start
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    chunk = jaxfeat.chunk_targets(
        fit["restarts"], fit["T"], 3, fit["k"], 4, jax.local_devices(), solver
    )
    Path(args.result).write_text(
        json.dumps(
            {
                "targets": args.batch,
                "seconds": seconds,
                "peak_rss_bytes": _vm_hwm(),
                "input_bytes": probs.nbytes,
                "output_bytes": sum(np.asarray(x).nbytes for x in jax.tree.leaves(res)),
                "chunk_targets": chunk,
                "chunks": -(-args.batch // chunk),
                "device_peak_bytes": None if not stats else stats.get("peak_bytes_in_use"),
            }
        )
    )


def _vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# Sections


def _worker(
    kind: str, cfg: dict, result: Path, n: int, *extra: str, timeout: float, **options: Any
) -> dict:
    """Runs a worker of this script as a job of n local processes; returns its result file."""
    argv = ["python", str(HERE), "--worker", kind, "--config", json.dumps(cfg)]
    job = launch.LocalJob([*argv, "--result", str(result), *extra], n, **options)
    done = job.finish(timeout=timeout)
    if any(f.returncode != 0 for f in done):
        raise RuntimeError(f"{kind} worker ({n} processes) failed:\n{done[0].stderr[-3000:]}")
    return json.loads(result.read_text())


def section_processes(cfg: dict, tmp: Path) -> dict[str, Any]:
    runs, reference = [], None
    for n in cfg["processes"]:
        result = tmp / f"processes_{n}.json"
        row = _worker("processes", cfg, result, n, timeout=1800)
        losses = np.load(result.with_suffix(".npy"))
        reference = losses if reference is None else reference
        row["same_losses_as_one_process"] = bool(np.array_equal(losses, reference))
        row["targets_per_s"] = cfg["processes_batch"] / row["warm_s"]
        runs.append(row)
        log(f"{n} processes: warm {row['warm_s']:.2f} s")
    base = runs[0]["targets_per_s"]
    for row in runs:
        row["speedup"] = row["targets_per_s"] / base
        row["efficiency"] = row["speedup"] / row["processes"]
    return {
        "description": "one batch fitted by a job of P processes on 127.0.0.1 (gloo)",
        "batch": cfg["processes_batch"],
        "fit": cfg["fit"],
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }


def section_memory(cfg: dict, tmp: Path) -> dict[str, Any]:
    rows = []
    for n in cfg["memory_batches"]:
        result = tmp / f"memory_{n}.json"
        # A fresh process per size: its resident high-water mark is this call's own.
        row = _worker(
            "memory",
            cfg,
            result,
            1,
            "--batch",
            str(n),
            timeout=3600,
            env={"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")},
        )
        rows.append(row)
        log(f"memory: {n} targets, peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB")
    for row in rows:
        row["peak_less_inputs_outputs_bytes"] = (
            row["peak_rss_bytes"] - row["input_bytes"] - row["output_bytes"]
            if row["peak_rss_bytes"]
            else None
        )
    return {
        "description": "peak resident memory of one fit_batch call, each size in a new process",
        "fit": cfg["memory_fit"],
        "chunk_bytes": cfg["memory_chunk_bytes"] or jaxfeat.SolverSettings().chunk_bytes,
        "rows": rows,
    }


def section_lanes(cfg: dict) -> dict[str, Any]:
    field = "cpu_lane_bytes" if jax.default_backend() == "cpu" else "accelerator_lanes"
    t, probs = batch(cfg["lanes_batch"], cfg["fit"]["T"])
    rows = []
    for value in cfg["lanes"]:
        solver = jaxfeat.SolverSettings(**{field: value})
        out = timed_fit(t, probs, cfg["fit"], solver=solver)
        out.pop("_result")
        out.update({field: value, "fits_per_minute": 60 * cfg["lanes_batch"] / out["warm_s"]})
        rows.append(out)
        log(f"lanes: {field}={value}: {out['fits_per_minute']:.0f} fits/min")
    best = max(rows, key=lambda r: r["fits_per_minute"])
    return {
        "description": f"fits per minute against {field}",
        "field": field,
        "batch": cfg["lanes_batch"],
        "default": getattr(jaxfeat.SolverSettings(), field),
        "best": best[field],
        "rows": rows,
    }


def section_fits_per_minute(cfg: dict) -> dict[str, Any]:
    fit, n = cfg["fit"], cfg["fpm_batch"]
    t, probs = batch(n, fit["T"])
    # One chunk first: it compiles the program every chunk of the big call then reuses.
    chunk = jaxfeat.chunk_targets(fit["restarts"], fit["T"], 3, fit["k"], 4, jax.local_devices())
    first = timed_fit(t, probs[: min(n, chunk)], fit, repeat=False)
    out = timed_fit(t, probs, fit, repeat=False)
    out.pop("_result")
    out["warm_s"] = out.pop("first_s")
    out.update(
        compile_call_s=first["first_s"],
        chunk_targets=chunk,
        fits_per_minute=60 * n / out["warm_s"],
        goal_fits_per_minute_on_h100_h200=1e5,
    )
    log(f"fits per minute: {out['fits_per_minute']:.0f}")
    return {"batch": n, "fit": fit, **out}


def section_large_vocab(cfg: dict) -> dict[str, Any]:
    v = cfg["vocab"]
    tgt = jaxfeat.targets.random_smooth(0, 3, v["V"], n=v["T"])
    out = timed_fit(np.asarray(tgt.t), np.asarray(tgt.probs)[None], v)
    out.pop("_result")
    cpu = None
    if CPU_RESULTS.exists():
        point = json.loads(CPU_RESULTS.read_text())["large_vocab"]["quality"].get(str(v["V"]))
        cpu = None if point is None else point["warm_s"]
    out.update(
        cpu_warm_s=cpu,
        speedup_over_cpu=None if cpu is None else cpu / out["warm_s"],
        goal_speedup_on_h100_h200=20.0,
    )
    log(f"V = {v['V']}: warm {out['warm_s']:.2f} s (CPU {cpu} s)")
    return {"target": f"random_smooth(0, 3, {v['V']}, n={v['T']})", "fit": v, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to a temporary file")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--into", type=Path, default=None, help="add to this results file")
    ap.add_argument("--worker", choices=["processes", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    launch.add_distributed_arguments(ap)
    args = ap.parse_args(argv)
    if args.worker == "processes":
        worker_processes(args)
        return 0
    if args.worker == "memory":
        worker_memory(args)
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    backend = jax.default_backend()
    if backend != "cpu" and "processes" in sections:
        sections.remove("processes")  # a job of CPU processes on this host: a CPU section
    if backend == "cpu" and not args.smoke and "large_vocab" in sections:
        # The CPU's own V = 10,000 fit is throughput.py's large_vocab section (167 s a call).
        sections.remove("large_vocab")
    mode = "smoke" if args.smoke else "full"
    cfg = config(mode, backend)
    if args.into:
        path = args.into
    elif args.out:
        path = args.out
    elif args.smoke:
        path = Path(tempfile.mkdtemp()) / "scaling_smoke.json"
    else:
        path = HERE.parent / "results" / f"scaling_{backend}.json"
    results: dict[str, Any] = {"environment": environment(), "mode": mode, "config": cfg}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {
            "processes": lambda: section_processes(cfg, Path(tmp)),
            "memory": lambda: section_memory(cfg, Path(tmp)),
            "lanes": lambda: section_lanes(cfg),
            "fits_per_minute": lambda: section_fits_per_minute(cfg),
            "large_vocab": lambda: section_large_vocab(cfg),
        }
        for s in sections:
            start = time.perf_counter()
            results[s] = runners[s]()
            results[s]["section_wall_s"] = time.perf_counter() - start
            if args.into:
                whole = json.loads(path.read_text()) if path.exists() else {}
                atomic_write_json(path, {**whole, "scaling": results})
            else:
                atomic_write_json(path, results)
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
