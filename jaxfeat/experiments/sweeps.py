"""The feature-count sweeps: how many features a curve needs as its complexity, the tolerance, the
vocabulary and the encoder change.

Every sweep is a list of jobs; a job names a target (by constructor and arguments, so figures can
rebuild it), a tolerance and an activation. The runner groups jobs that share a grid into calls of
``required_features_batch``, writes each group's rows to the sweep's results file (see
:mod:`jaxfeat._sweep`) and skips rows that are already there, so an interrupted sweep resumes where
it stopped. Rows carry the certified lower bound, the achieved k, the approximation-theory
prediction, the per-k losses and bounds, and wall times.

Sweeps (``SWEEPS``):

* ``oscillations``: ``oscillating(m)`` for m = 1..8 (theory: k grows linearly in m).
* ``tolerance``: log-spaced tolerances for m in {1, 2, 4} (theory: k ~ tol^(-1/4)).
* ``vocabulary``: ``tuning_curves`` and ``random_smooth`` with V from 3 to 1000.
* ``encoders``: relu, jumprelu and softplus, next to the unconstrained-encoder count (the affine
  rank of the centred log-probability path, :func:`jaxfeat.affine_rank`).
* ``examples``: the seed's examples: the HTML tag (one feature) and the temperatures (monotone: one;
  non-monotone: more).
* ``seed_fits``: the best 1-, 2- and 3-feature fits of the seed's three curves (the HTML tag and
  both temperatures), with their parameters, for the seed's figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import jaxfeat
from jaxfeat import Target, affine_rank, distributed
from jaxfeat import targets as _targets

from .store import Processes, ResultsStore, claim, jsonable, load, parts, release_compiled, row_id

SWEEPS = ("oscillations", "tolerance", "vocabulary", "encoders", "examples", "seed_fits")
# The seed's three curves, as target specs (the examples and seed_fits sweeps).
SEED_SPECS = (
    (("family", "html_closing_tag"),),
    (("family", "temperature"), ("n", 101), ("nonmonotone", False)),
    (("family", "temperature"), ("n", 101), ("nonmonotone", True)),
)
THEORY_TOL_SLOPE = -0.25
UNCONSTRAINED = "unconstrained"
# Activations for which the segmentation bound is a certified bound (piecewise-linear logits).
BOUNDED = ("relu", "jumprelu")


def _logspace(hi: float, lo: float, num: int) -> tuple[float, ...]:
    # Rounded to 3 significant digits so tolerances (and row ids) are the same on every platform.
    return tuple(float(f"{x:.3g}") for x in np.logspace(np.log10(hi), np.log10(lo), num))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run of the sweeps; :data:`QUICK` and :data:`FULL` are the two presets.

    Attributes:
      mode: preset name, shown in progress lines (``benchmarks/feature_count.py`` also names its
        default results directory after it).

      n: grid points of the parametric targets.
      k_max: largest feature count tried (per sweep overrides in ``k_max_by_sweep``).
      restarts: restarts per fit.
      max_steps: optimiser steps per fit.
      polish_steps: steps of the second try at the decisive count (see
        :func:`jaxfeat.required_features`).
      continuity: try the continuity bound where a ReLU bracket is still open.
      key: seed of the fits.
      batch: targets per ``required_features_batch`` call (rows are saved after each call). On
        a CPU one target per call is fastest: batched fits run as long as their slowest member
        and batch shapes add compilations.

      osc_m: oscillation counts m.
      osc_tols: tolerances of the oscillation sweep.
      tol_m: oscillation counts of the tolerance sweep.
      tol_tols: tolerances of the tolerance sweep (log-spaced).
      vocab_sizes: vocabulary sizes V.
      vocab_n: grid points of the vocabulary sweep's targets.
      vocab_tol: tolerance of the vocabulary sweep.
      width: tuning-curve width (units of t).
      bandwidth: random-smooth bandwidth B.
      enc_targets: target specs of the encoder sweep.
      enc_tol: tolerance of the encoder sweep.
      example_tols: tolerances of the examples sweep.
      fit_ks: feature counts of the seed fits.
      fit_restarts: restarts of the seed fits.
      k_max_by_sweep: per-sweep ``k_max`` overrides.
    """

    mode: str
    n: int
    k_max: int
    restarts: int
    max_steps: int
    polish_steps: int
    continuity: bool = True
    key: int = 0
    batch: int = 4
    osc_m: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    osc_tols: tuple[float, ...] = (1e-3,)
    tol_m: tuple[int, ...] = (1, 2, 4)
    tol_tols: tuple[float, ...] = _logspace(1e-2, 1e-4, 5)
    vocab_sizes: tuple[int, ...] = (3, 4, 8, 16, 32, 64)
    vocab_n: int = 128
    vocab_tol: float = 1e-3
    width: float = 0.1
    bandwidth: int = 3
    enc_targets: tuple[tuple[tuple[str, Any], ...], ...] = ()
    enc_tol: float = 1e-3
    example_tols: tuple[float, ...] = (1e-3,)
    fit_ks: tuple[int, ...] = (1, 2, 3)
    fit_restarts: int = 16
    k_max_by_sweep: tuple[tuple[str, int], ...] = ()

    def k_max_for(self, sweep: str) -> int:
        return dict(self.k_max_by_sweep).get(sweep, self.k_max)

    def fit_config(self, sweep: str) -> dict[str, Any]:
        """The settings a sweep's numbers depend on (checked when a results file is resumed)."""
        if sweep == "seed_fits":
            return {"restarts": self.fit_restarts, "max_steps": self.max_steps, "key": self.key}
        return {
            "k_max": self.k_max_for(sweep),
            "restarts": self.restarts,
            "max_steps": self.max_steps,
            "polish_steps": self.polish_steps,
            "continuity": self.continuity,
            "key": self.key,
            "metric": "mean_kl",
        }


def _spec(family: str, **kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return (("family", family), *sorted(kwargs.items()))


# Quick: what `jaxfeat reproduce` runs (about five minutes on a busy 2-core CPU). Fewer restarts
# and steps than the full run, five tolerances, a subset of vocabulary sizes on a 64-point grid
# (the certified bound costs O(T^3 V b) with token buckets of b = 32) and two targets for the
# encoders.
QUICK = Settings(
    mode="quick",
    n=128,
    k_max=40,
    restarts=8,
    max_steps=200,
    polish_steps=400,
    batch=1,
    vocab_sizes=(3, 8, 16, 32, 64),
    vocab_n=64,
    enc_targets=(
        _spec("oscillating", m=2, n=128, vocab=3),
        _spec("temperature", nonmonotone=True, n=101),
    ),
    fit_restarts=8,
    k_max_by_sweep=(("vocabulary", 24), ("encoders", 16), ("examples", 8)),
)

# Full: finer grids in m's tolerances, the tolerance and V, more encoder targets, the fits at
# their default sizes.
FULL = dataclasses.replace(
    QUICK,
    mode="full",
    n=256,
    k_max=96,
    restarts=16,
    max_steps=200,
    polish_steps=400,
    osc_tols=(1e-2, 1e-3, 1e-4),
    tol_tols=_logspace(1e-2, 1e-4, 9),
    vocab_sizes=(3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1000),
    vocab_n=128,
    enc_targets=tuple(
        [_spec("oscillating", m=m, n=256, vocab=3) for m in (1, 2, 4)]
        + [
            _spec("temperature", nonmonotone=True, n=101),
            _spec("tuning_curves", n_tokens=8, width=0.1, n=256),
            _spec("random_smooth", key=0, bandwidth=3, vocab=8, n=256),
        ]
    ),
    example_tols=(1e-2, 1e-3, 1e-4),
    fit_restarts=32,
    k_max_by_sweep=(("vocabulary", 48), ("encoders", 48), ("examples", 16)),
)
PRESETS = {"quick": QUICK, "full": FULL}


# ---------------------------------------------------------------------------------------------
# Targets by name


_FAMILIES: dict[str, Callable[..., Target]] = {
    "oscillating": _targets.oscillating,
    "tuning_curves": _targets.tuning_curves,
    "random_smooth": _targets.random_smooth,
    "temperature": _targets.temperature,
    "html_closing_tag": _targets.html_closing_tag,
}


def make_target(spec: Mapping[str, Any]) -> Target:
    """Builds a target from a spec ``{"family": name, **arguments}`` as stored in results rows.

    Example:
      >>> make_target({"family": "oscillating", "m": 2, "n": 64}).probs.shape
      (64, 3)
    """
    spec = dict(spec)
    family = spec.pop("family", None)
    if family not in _FAMILIES:
        raise ValueError(f"unknown target family {family!r}; use one of {sorted(_FAMILIES)}.")
    return _FAMILIES[family](**spec)


def target_label(spec: Mapping[str, Any]) -> str:
    """A short readable name for a target spec, e.g. ``"oscillating(m=2)"``.

    Grid size, seeds and the default vocabulary are left out: they do not change what the target
    is about.

    Example:
      >>> target_label({"family": "tuning_curves", "n_tokens": 8, "width": 0.1, "n": 128})
      'tuning_curves(V=8, width=0.1)'
    """
    family = spec["family"]
    names = {"n_tokens": "V", "vocab": "V", "bandwidth": "B"}
    parts = []
    for k, v in spec.items():
        if k in ("family", "n", "key") or (family == "oscillating" and k == "vocab" and v == 3):
            continue
        value = f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(f"{names.get(k, k)}={value}")
    return f"{family}({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclasses.dataclass(frozen=True)
class _Job:
    sweep: str
    target: tuple[tuple[str, Any], ...]
    tol: float
    activation: str = "relu"
    k: int | None = None  # seed_fits only

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.target)

    @property
    def id(self) -> str:
        params: dict[str, Any] = {"target": self.spec, "activation": self.activation}
        if self.k is not None:
            params["k"] = self.k
        else:
            params["tol"] = self.tol
        return row_id(self.sweep, params)


def jobs(sweep: str, settings: Settings) -> list[_Job]:
    """The jobs of one sweep under the given settings (one results row each)."""
    s = settings
    osc = lambda m: _spec("oscillating", m=m, n=s.n, vocab=3)
    if sweep == "oscillations":
        return [_Job(sweep, osc(m), tol) for tol in s.osc_tols for m in s.osc_m]
    if sweep == "tolerance":
        return [_Job(sweep, osc(m), tol) for m in s.tol_m for tol in s.tol_tols]
    if sweep == "vocabulary":
        out = []
        for V in s.vocab_sizes:
            out.append(
                _Job(
                    sweep,
                    _spec("tuning_curves", n_tokens=V, width=s.width, n=s.vocab_n),
                    s.vocab_tol,
                )
            )
            out.append(
                _Job(
                    sweep,
                    _spec("random_smooth", key=0, bandwidth=s.bandwidth, vocab=V, n=s.vocab_n),
                    s.vocab_tol,
                )
            )
        return out
    if sweep == "encoders":
        return [
            _Job(sweep, spec, s.enc_tol, act)
            for spec in s.enc_targets
            for act in ("relu", "jumprelu", "softplus", UNCONSTRAINED)
        ]
    if sweep == "examples":
        return [_Job(sweep, spec, tol) for tol in s.example_tols for spec in SEED_SPECS]
    if sweep == "seed_fits":
        return [_Job(sweep, spec, math.nan, "relu", k) for spec in SEED_SPECS for k in s.fit_ks]
    raise ValueError(f"unknown sweep {sweep!r}; use one of {', '.join(SWEEPS)}.")


def _default_counter() -> Any:
    return jaxfeat


def _to_list(x: Any) -> list[float | None] | None:
    if x is None:
        return None
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, np.float64).ravel()]


def _params_dict(params: Any) -> dict[str, Any]:
    return {
        name: np.asarray(getattr(params, name)).tolist() for name in ("c", "l", "w", "b", "theta")
    }


def _count_rows(
    group: Sequence[_Job], built: Sequence[Target], s: Settings, counter: Any
) -> list[dict[str, Any]]:
    """Runs one ``required_features_batch`` call and turns its results into rows."""
    job0 = group[0]
    k_max = s.k_max_for(job0.sweep)
    start = time.perf_counter()
    results = counter.required_features_batch(
        list(built),
        job0.tol,
        metric="mean_kl",
        k_max=k_max,
        activation=job0.activation,
        restarts=s.restarts,
        max_steps=s.max_steps,
        polish_steps=s.polish_steps,
        continuity=s.continuity,
        key=s.key,
    )
    batch_seconds = time.perf_counter() - start
    rows = []
    for job, tgt, res in zip(group, built, results, strict=True):
        t0 = time.perf_counter()
        try:
            predicted = float(counter.predicted_features(tgt, job.tol))
        except ValueError:  # e.g. a two-point grid has no curvature to measure
            predicted = None
        predict_seconds = time.perf_counter() - t0
        k = None if res.k is None else int(res.k)
        lb = None if res.lower_bound is None else int(res.lower_bound)
        fit = res.fit
        row = {
            **_row_head(job, tgt),
            "tol": job.tol,
            "metric": "mean_kl",
            "activation": job.activation,
            "k_max": k_max,
            "k": k,
            "lower_bound": lb,
            "segmentation_bound": None if lb is None else int(res.segmentation_bound),
            "bound_certified": job.activation in BOUNDED,
            "gap": None if k is None or lb is None else k - lb,
            "predicted": predicted if predicted is None or np.isfinite(predicted) else None,
            "affine_rank": affine_rank(tgt, job.tol),
            "losses": _to_list(res.losses),
            "bounds": _to_list(res.bounds),
            "fit_mean_kl": None if fit is None else float(fit.mean_kl),
            "fit_max_kl": None if fit is None else float(fit.max_kl),
            "fit_converged": None if fit is None else bool(fit.converged),
            "seconds": batch_seconds / len(group),
            "batch_seconds": batch_seconds,
            "batch_size": len(group),
            "predict_seconds": predict_seconds,
        }
        if job.sweep == "examples" and fit is not None:
            row["params"] = _params_dict(fit.params)
        rows.append(row)
    return rows


def _row_head(job: _Job, tgt: Target) -> dict[str, Any]:
    """The fields every row starts with: its id, sweep and target."""
    return {
        "id": job.id,
        "sweep": job.sweep,
        "target": job.spec,
        "label": target_label(job.spec),
        "T": int(tgt.num_points),
        "V": int(tgt.vocab),
    }


def _rank_row(job: _Job, tgt: Target) -> dict[str, Any]:
    start = time.perf_counter()
    r = affine_rank(tgt, job.tol)
    return {
        **_row_head(job, tgt),
        "tol": job.tol,
        "metric": "mean_kl",
        "activation": UNCONSTRAINED,
        "k": r,
        "lower_bound": None,
        "bound_certified": False,
        "gap": None,
        "predicted": None,
        "affine_rank": r,
        "exact_rank": affine_rank(tgt),
        "seconds": time.perf_counter() - start,
    }


def _fit_rows(group: Sequence[_Job], tgt: Target, s: Settings) -> list[dict[str, Any]]:
    ks = [job.k for job in group]
    start = time.perf_counter()
    results = jaxfeat.fit_ks(
        tgt,
        ks,
        restarts=s.fit_restarts,
        max_steps=s.max_steps,
        key=s.key,
        activation=group[0].activation,
    )
    seconds = time.perf_counter() - start
    return [
        {
            **_row_head(job, tgt),
            "activation": res.activation,
            "k": job.k,
            "tokens": list(tgt.tokens) if tgt.tokens else None,
            "mean_kl": float(res.mean_kl),
            "max_kl": float(res.max_kl),
            "converged": bool(res.converged),
            "params": _params_dict(res.params),
            "seconds": seconds / len(group),
        }
        for job, res in zip(group, results, strict=True)
    ]


def _groups(todo: Sequence[_Job], built: Mapping[str, Target], batch: int) -> list[list[_Job]]:
    """Jobs that can share one call (same grid, V, tolerance and activation), ``batch`` at most.

    Groups come in the order of their first job; jobs keep their order within a group.
    """

    def key(job: _Job):
        tgt = built[job.id]
        if job.k is not None:  # fits of one target at several k share one fit_ks call
            return (job.activation, job.target)
        return (job.activation, job.tol, tgt.probs.shape, np.asarray(tgt.t).tobytes())

    by_key: dict[Any, list[_Job]] = {}
    for job in todo:
        by_key.setdefault(key(job), []).append(job)
    out = []
    for group in by_key.values():
        if group[0].activation == UNCONSTRAINED:
            size = 1  # no fit: nothing to share, and each row is saved at once
        elif group[0].k is not None:
            size = len(group)  # one target's seed fits: one fit_ks call
        else:
            size = batch
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def results_path(results_dir: str | Path, sweep: str) -> Path:
    """The results file of one sweep: ``results_dir / f"{sweep}.json"``."""
    return Path(results_dir) / f"{sweep}.json"


def run_sweep(
    sweep: str,
    results_dir: str | Path,
    settings: Settings | str = "quick",
    *,
    counter: Any = None,
    fresh: bool = False,
    progress: bool = True,
    processes: Processes | None = None,
    claims: str | Path | None = None,
) -> Path:
    """Runs (or resumes) one sweep, saving its rows to ``results_dir/<sweep>.json`` as they finish.

    In a job of several processes (``processes``, e.g. ``Processes.from_jax()`` after
    :func:`jaxfeat.distributed.initialize`), every process runs this with the same arguments and
    computes every n-th row (one target's seed fits together, as they share one call) on its
    own devices (:meth:`ResultsStore.mine`); the rows are merged
    into the one file at the end. A row's numbers do not depend on which process computed it
    (rows are fitted one per call, ``Settings.batch`` = 1 in the presets).

    With ``claims`` (the local workers of :mod:`jaxfeat.experiments.workers`), processes take
    rows in order instead, each one it is the first to claim (:func:`~.workers.claim`): a row
    with the same numbers as another sweep's (see :func:`_computed_elsewhere`) has that row's
    claim, so it is computed once; process 0 merges and copies after the others have finished.

    Args:
      sweep: one of :data:`SWEEPS`.
      results_dir: directory of the results files.
      settings: a :class:`Settings` or a preset name (``"quick"``, ``"full"``).
      counter: the feature counter, an object with ``required_features_batch`` and
        ``predicted_features`` (default: :mod:`jaxfeat._count`); tests pass a stand-in.
      fresh: discard an existing results file instead of resuming it.
      progress: print a progress line on stderr.
      processes: this process of the job (default: a job of one).
      claims: the directory of the job's claim files, for processes that take rows as they go.

    Returns:
      The results file's path.

    Raises:
      ValueError: for an unknown sweep or preset, or a results file written with other settings.
    """
    s = _settings(settings)
    procs = processes or Processes()
    todo_all = jobs(sweep, s)
    order = [job.id for job in todo_all]
    store = ResultsStore(
        results_path(results_dir, sweep),
        sweep,
        config=s.fit_config(sweep),
        fresh=fresh,
        processes=procs,
    )
    # One target's seed fits share one fit_ks call (their keys depend on it): one process.
    groups = [job.target if job.k is not None else job.id for job in todo_all]
    if claims is None:
        mine = set(store.mine(order, groups))
    else:
        mine = {job.id for job in todo_all if not store.done(job.id)}
    todo = [job for job in todo_all if job.id in mine]
    if not todo:
        store.merge(order)
        return store.path
    if counter is None and any(j.k is None and j.activation != UNCONSTRAINED for j in todo):
        counter = _default_counter()
    built = {job.id: make_target(job.spec) for job in todo}
    finished = sum(store.done(job.id) for job in todo_all) if procs.count == 1 else 0
    bar = tqdm(
        total=len(todo) + finished,
        initial=finished,
        desc=f"{sweep} ({s.mode})"
        + (f" process {procs.index}/{procs.count}" if procs.count > 1 else ""),
        unit="row",
        disable=not progress,
    )
    copies = _computed_elsewhere(results_dir, sweep, todo, s)
    if copies:
        store.add_many(copies.values())
        bar.update(len(copies))
        todo = [job for job in todo if job.id not in copies]
    for group in _groups(todo, built, s.batch):
        job0 = group[0]
        if claims is not None and not claim(claims, _claim_key(group, s)):
            continue  # another process computes it, under this id or another sweep's
        release_compiled()
        # Each process fits its own rows: no call may wait for the other processes.
        with distributed.local():
            if job0.activation == UNCONSTRAINED:
                rows = [_rank_row(job0, built[job0.id])]
            elif job0.k is not None:
                rows = _fit_rows(group, built[job0.id], s)
            else:
                rows = _count_rows(group, [built[j.id] for j in group], s, counter)
        store.add_many(rows)
        last = rows[-1]
        note = f"{last['label']} k={last['k']}" + (f" tol={last['tol']:g}" if "tol" in last else "")
        bar.set_postfix_str(note, refresh=False)
        bar.update(len(rows))
    bar.close()
    store.merge(order)
    return store.path


def _claim_key(group: Sequence[_Job], s: Settings) -> str:
    """What a group computes, whatever its sweep: its jobs and the settings they are fitted with."""
    same = [dataclasses.replace(job, sweep="*").id for job in group]
    return json.dumps([same, jsonable(s.fit_config(group[0].sweep))], sort_keys=True)


def _computed_elsewhere(
    results_dir: str | Path, sweep: str, todo: Sequence[_Job], s: Settings
) -> dict[str, dict[str, Any]]:
    """Rows of ``todo`` that another sweep in ``results_dir`` has already computed, by id.

    The tolerance sweep's rows at the oscillation sweep's tolerance are that sweep's rows: the
    same target, tolerance, activation and fit settings give the same numbers (one target per
    call, ``Settings.batch`` = 1, so a row does not depend on its neighbours). Such a row is
    copied under this sweep's id, with ``copied_from`` naming the original, instead of being
    computed again.
    """
    if s.batch != 1:
        return {}
    count_jobs = [j for j in todo if j.k is None and j.activation != UNCONSTRAINED]
    out: dict[str, dict[str, Any]] = {}
    for other in SWEEPS:
        if other == sweep or not count_jobs:
            continue
        path = results_path(results_dir, other)
        rows = {}
        for data in map(load, [path, *parts(path)]):  # the parts: rows of unmerged processes
            if data is not None and data.get("config") == jsonable(s.fit_config(sweep)):
                rows.update({r["id"]: r for r in data["rows"]})
        for job in count_jobs:
            row = rows.get(dataclasses.replace(job, sweep=other).id)
            if row is not None and job.id not in out:
                out[job.id] = {**row, "id": job.id, "sweep": sweep, "copied_from": row["id"]}
    return out


def _settings(settings: Settings | str) -> Settings:
    if isinstance(settings, Settings):
        return settings
    if settings not in PRESETS:
        raise ValueError(
            f"settings={settings!r} is unknown; use one of {sorted(PRESETS)} or a Settings."
        )
    return PRESETS[settings]


def run_sweeps(
    results_dir: str | Path,
    settings: Settings | str = "quick",
    *,
    sweeps: Sequence[str] = SWEEPS,
    counter: Any = None,
    fresh: bool = False,
    progress: bool = True,
    processes: Processes | None = None,
    claims: str | Path | None = None,
) -> dict[str, Path]:
    """Runs (or resumes) several sweeps; see :func:`run_sweep`.

    Args:
      results_dir: directory of the results files (one JSON file per sweep).
      settings: a :class:`Settings` or a preset name: ``"quick"`` (a few minutes on a laptop CPU,
        used by ``jaxfeat reproduce``) or ``"full"``.
      sweeps: which sweeps, in order.
      counter: see :func:`run_sweep`.
      fresh: start every sweep again.
      progress: progress lines on stderr.
      processes, claims: see :func:`run_sweep`.

    Returns:
      ``{sweep: results file}``.
    """
    for sweep in sweeps:
        if sweep not in SWEEPS:
            raise ValueError(f"unknown sweep {sweep!r}; use one of {', '.join(SWEEPS)}.")
    return {
        sweep: run_sweep(
            sweep,
            results_dir,
            settings,
            counter=counter,
            fresh=fresh,
            progress=progress,
            processes=processes,
            claims=claims,
        )
        for sweep in sweeps
    }


# ---------------------------------------------------------------------------------------------
# Summary


@dataclasses.dataclass(frozen=True)
class Summary:
    """Printable tables and key statistics of a set of results files.

    Attributes:
      text: the tables and statistics as plain text.
      stats: the numbers: ``gap`` (bracket gap k - lower bound), ``tolerance_slope`` (log k vs
        log tol), ``k_per_m`` (oscillations), ``encoders`` and ``examples``.
    """

    text: str
    stats: dict[str, Any]

    def __str__(self) -> str:
        return self.text


def read_rows(results_dir: str | Path, sweep: str) -> list[dict[str, Any]]:
    """The rows of one sweep's results file (empty if the file does not exist)."""
    data = load(results_path(results_dir, sweep))
    return [] if data is None else data["rows"]


def gap_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Bracket statistics over rows whose lower bound is certified (ReLU / JumpReLU).

    ``gap = k - lower_bound`` is how far the achieved count is above what is provably needed; rows
    where no k up to ``k_max`` reached the tolerance are counted as ``censored``.

    Returns:
      ``{"n", "censored", "le1" (fraction of gaps <= 1), "zero" (fraction of gaps == 0),
      "max", "hist" {gap: count}}``.

    Example:
      >>> gap_stats([{"k": 3, "lower_bound": 3, "bound_certified": True},
      ...            {"k": 5, "lower_bound": 3, "bound_certified": True}])["le1"]
      0.5
    """
    rel = [r for r in rows if r.get("bound_certified") and r.get("lower_bound") is not None]
    gaps = [r["k"] - r["lower_bound"] for r in rel if r.get("k") is not None]
    hist: dict[int, int] = {}
    for g in gaps:
        hist[g] = hist.get(g, 0) + 1
    n = len(gaps)
    return {
        "n": n,
        "censored": len(rel) - n,
        "le1": sum(g <= 1 for g in gaps) / n if n else None,
        "zero": sum(g == 0 for g in gaps) / n if n else None,
        "max": max(gaps) if gaps else None,
        "hist": dict(sorted(hist.items())),
    }


def loglog_slope(
    x: Sequence[float], y: Sequence[float], groups: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Least-squares slope of log y against log x, with one intercept per group.

    Args:
      x: positive abscissae (e.g. tolerances).
      y: positive ordinates (e.g. feature counts).
      groups: optional group label per point (e.g. m); each group gets its own intercept and the
        slope is shared.

    Returns:
      ``{"slope", "stderr", "n"}``; ``slope`` is ``None`` with fewer than two distinct x per group.

    Example:
      >>> round(loglog_slope([1e-2, 1e-4], [3.0, 3.0 * 10 ** 0.5])["slope"], 6)
      -0.25
    """
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    g = (
        np.zeros(len(lx), int)
        if groups is None
        else np.unique(np.asarray(groups), return_inverse=True)[1]
    )
    dx, dy = lx.copy(), ly.copy()
    for gi in np.unique(g):
        sel = g == gi
        dx[sel] -= lx[sel].mean()
        dy[sel] -= ly[sel].mean()
    sxx = float(dx @ dx)
    n, dof = len(lx), len(lx) - len(np.unique(g)) - 1
    if n == 0 or sxx == 0:
        return {"slope": None, "stderr": None, "n": n}
    slope = float(dx @ dy) / sxx
    resid = dy - slope * dx
    stderr = math.sqrt(float(resid @ resid) / dof / sxx) if dof > 0 else None
    return {"slope": slope, "stderr": stderr, "n": n}


def tolerance_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Slopes of log k against log tol (achieved k, lower bound, prediction), per m and pooled.

    Rows whose k is censored (above ``k_max``) or below 1 are left out.
    """
    out: dict[str, Any] = {"theory": THEORY_TOL_SLOPE}
    for field in ("k", "lower_bound", "predicted"):
        ok = [r for r in rows if r.get(field) is not None and r[field] >= 1]
        ms = [r["target"].get("m") for r in ok]
        per = {}
        for m in sorted(set(ms)):
            sub = [r for r in ok if r["target"].get("m") == m]
            per[m] = loglog_slope([r["tol"] for r in sub], [r[field] for r in sub])
        out[field] = {
            "pooled": loglog_slope([r["tol"] for r in ok], [r[field] for r in ok], ms),
            "per_m": per,
        }
    return out


def k_per_m_stats(rows: Sequence[Mapping[str, Any]]) -> dict[float, dict[str, Any]]:
    """``k / m`` across oscillation counts m, per tolerance, with a line fit ``k = a m + b``."""
    out = {}
    for tol in sorted({r["tol"] for r in rows}):
        sub = sorted(
            (r for r in rows if r["tol"] == tol and r.get("k") is not None),
            key=lambda r: r["target"]["m"],
        )
        if not sub:
            continue
        m = np.array([r["target"]["m"] for r in sub], float)
        k = np.array([r["k"] for r in sub], float)
        ratio = k / m
        fit = np.polyfit(m, k, 1) if len(sub) >= 2 else (math.nan, math.nan)
        pred = [r["predicted"] / r["target"]["m"] for r in sub if r.get("predicted") is not None]
        out[tol] = {
            "per_m": {int(mi): float(ri) for mi, ri in zip(m, ratio, strict=True)},
            "mean": float(ratio.mean()),
            "std": float(ratio.std()),
            "slope": float(fit[0]),
            "intercept": float(fit[1]),
            "predicted_per_m": float(np.mean(pred)) if pred else None,
            "censored": sum(1 for r in rows if r["tol"] == tol and r.get("k") is None),
        }
    return out


def _fmt(x: Any, spec: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not spec:
        return f"{x:.3g}"
    return format(x, spec)


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table; ``cols`` are (header, key, format spec)."""
    cells = [[h for h, _, _ in cols]]
    for r in rows:
        cells.append([_fmt(r.get(key), spec) for _, key, spec in cols])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_COUNT_COLS = [
    ("target", "label", ""),
    ("tol", "tol", "g"),
    ("act", "activation", ""),
    ("LB", "lower_bound", ""),
    ("k", "k", ""),
    ("pred", "predicted", ".1f"),
    ("gap", "gap", ""),
    ("rank", "affine_rank", ""),
    ("fit KL", "fit_mean_kl", ".2e"),
    ("s", "seconds", ".1f"),
]


def _slope_text(d: Mapping[str, Any]) -> str:
    if d.get("slope") is None:
        return "-"
    se = f" +- {d['stderr']:.3f}" if d.get("stderr") is not None else ""
    return f"{d['slope']:.3f}{se} (n={d['n']})"


def summarize(results_dir: str | Path) -> Summary:
    """Tables of every sweep found in ``results_dir`` and the key statistics.

    Statistics: the bracket gap (achieved k - certified lower bound) over all ReLU/JumpReLU rows,
    the fitted slope of log k against log tol (theory: -1/4), ``k / m`` across oscillation counts
    (theory: constant), the encoder comparison and the seed's examples.

    Args:
      results_dir: directory with the sweeps' JSON files (missing sweeps are skipped).

    Returns:
      A :class:`Summary`; ``print(summary)`` shows the text.
    """
    rows = {sweep: read_rows(results_dir, sweep) for sweep in SWEEPS}
    stats: dict[str, Any] = {"rows": {k: len(v) for k, v in rows.items()}}
    parts = []
    titles = {
        "oscillations": "Oscillations: oscillating(m)",
        "tolerance": "Tolerance sweep",
        "vocabulary": "Vocabulary size",
        "encoders": "Encoders",
        "examples": "The seed's examples",
    }
    for sweep, title in titles.items():
        if rows[sweep]:
            parts.append(f"== {title} ==\n" + _table(rows[sweep], _COUNT_COLS))
    if rows["seed_fits"]:
        parts.append(
            "== The seed's curves, fitted ==\n"
            + _table(
                rows["seed_fits"],
                [
                    ("target", "label", ""),
                    ("k", "k", ""),
                    ("mean KL", "mean_kl", ".2e"),
                    ("max KL", "max_kl", ".2e"),
                    ("s", "seconds", ".1f"),
                ],
            )
        )
    count_rows = [r for s in SWEEPS[:5] for r in rows[s]]
    gap = gap_stats(count_rows)
    stats["gap"] = gap
    lines = ["== Key statistics =="]
    if gap["n"]:
        lines.append(
            f"bracket gap k - LB (ReLU/JumpReLU, {gap['n']} rows, {gap['censored']} "
            f"above k_max): gap <= 1 in {gap['le1']:.0%}, gap = 0 in {gap['zero']:.0%}, "
            f"max {gap['max']}, histogram {gap['hist']}"
        )
    if rows["tolerance"]:
        ts = tolerance_stats(rows["tolerance"])
        stats["tolerance_slope"] = ts
        lines.append(
            f"slope of log k vs log tol (theory {THEORY_TOL_SLOPE}): achieved "
            f"{_slope_text(ts['k']['pooled'])}; lower bound "
            f"{_slope_text(ts['lower_bound']['pooled'])}; predicted "
            f"{_slope_text(ts['predicted']['pooled'])}"
        )
        for m, d in ts["k"]["per_m"].items():
            lines.append(
                f"  m={m}: achieved {_slope_text(d)}; lower bound "
                f"{_slope_text(ts['lower_bound']['per_m'].get(m, {}))}"
            )
    if rows["oscillations"]:
        km = k_per_m_stats(rows["oscillations"])
        stats["k_per_m"] = km
        for tol, d in km.items():
            per = ", ".join(f"{m}:{v:.2f}" for m, v in d["per_m"].items())
            pred = "" if d["predicted_per_m"] is None else f", predicted {d['predicted_per_m']:.2f}"
            lines.append(
                f"k/m at tol {tol:g}: mean {d['mean']:.2f} +- {d['std']:.2f} ({per}); "
                f"fit k = {d['slope']:.2f} m + {d['intercept']:.2f}{pred}"
                + (f"; {d['censored']} above k_max" if d["censored"] else "")
            )
    if rows["encoders"]:
        enc: dict[str, dict[str, Any]] = {}
        for r in rows["encoders"]:
            enc.setdefault(r["label"], {})[r["activation"]] = r["k"]
        stats["encoders"] = enc
        for label, d in enc.items():
            lines.append(f"encoders, {label}: " + ", ".join(f"{a} {_fmt(k)}" for a, k in d.items()))
    if rows["examples"]:
        ex = {
            f"{r['label']} tol={r['tol']:g}": {"k": r["k"], "lower_bound": r["lower_bound"]}
            for r in rows["examples"]
        }
        stats["examples"] = ex
        lines.append(
            "examples: "
            + "; ".join(
                f"{name}: k={_fmt(d['k'])} (LB {_fmt(d['lower_bound'])})" for name, d in ex.items()
            )
        )
    parts.append("\n".join(lines))
    return Summary("\n\n".join(parts), stats)


def compare(
    reference: Mapping[str, Sequence[Mapping[str, Any]]],
    fresh: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    name: str = "reference",
    rtol: float = 0.05,
) -> str:
    """How freshly computed rows compare with reference rows, sweep by sweep.

    Rows are matched by id. Count rows agree when their ``k`` and ``lower_bound`` are equal; fit
    rows (``seed_fits``) when their ``mean_kl`` agree within ``rtol`` or both are below 1e-6
    nats (float32 rounding of exact fits).

    Args:
      reference: ``{sweep: rows}`` of the reference results.
      fresh: ``{sweep: rows}`` of this run.
      name: what to call the reference in the text.
      rtol: relative tolerance on fitted losses.

    Returns:
      A printable report: per sweep, rows matched and agreeing, and each disagreement.

    Example:
      >>> ref = {"oscillations": [{"id": "a", "label": "osc(m=1)", "k": 5, "lower_bound": 4}]}
      >>> print(compare(ref, {"oscillations": [{"id": "a", "label": "osc(m=1)", "k": 4,
      ...                                       "lower_bound": 4}]}))
      == Fresh results against the reference ==
      oscillations: 1 rows, 0 agree, 0 new, 0 missing
        osc(m=1): k 5 -> 4, lower bound 4 -> 4
    """
    lines = [f"== Fresh results against the {name} =="]
    for sweep in fresh:
        ref = {r["id"]: r for r in reference.get(sweep, [])}
        new = {r["id"]: r for r in fresh[sweep]}
        if not ref and not new:
            continue
        both = [i for i in new if i in ref]
        diffs = []
        for i in both:
            a, b = ref[i], new[i]
            if "mean_kl" in b and "lower_bound" not in b:
                la, lb = a.get("mean_kl"), b.get("mean_kl")
                same = (
                    la is not None
                    and lb is not None
                    and (abs(la - lb) <= rtol * max(abs(la), abs(lb)) or max(la, lb) < 1e-6)
                )
                if not same:
                    diffs.append(f"  {b.get('label', i)} k={b.get('k')}: mean KL {la} -> {lb}")
            elif (a.get("k"), a.get("lower_bound")) != (b.get("k"), b.get("lower_bound")):
                tol = f" tol={b['tol']:g}" if isinstance(b.get("tol"), float) else ""
                act = f" {b['activation']}" if b.get("activation", "relu") != "relu" else ""
                diffs.append(
                    f"  {b.get('label', i)}{tol}{act}: k {a.get('k')} -> {b.get('k')}, "
                    f"lower bound {a.get('lower_bound')} -> {b.get('lower_bound')}"
                )
        n_new = sum(i not in ref for i in new)
        n_missing = sum(i not in new for i in ref)
        lines.append(
            f"{sweep}: {len(both)} rows, {len(both) - len(diffs)} agree, {n_new} new, "
            f"{n_missing} missing"
        )
        lines += diffs
    return "\n".join(lines)
