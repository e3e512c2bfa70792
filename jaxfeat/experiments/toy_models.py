"""Trained toy models against the bracket: do trained networks and their SAEs use as many features
as the curve needs?

Run it with ``python benchmarks/toy_models.py [--full | --smoke]``; this module holds the sweeps.

Three sweeps, each a resumable results file in ``benchmarks/results/toy_models_<mode>/``:

- ``neurons``: MLP-only models (no attention, no LayerNorm) with the linear latent and few
  neurons. A one-layer model is exactly a ``d_mlp + 1``-feature model, so its trained mean KL to
  the target must lie above the certified bound for ``d_mlp + 1`` features; jaxfeat's own fit
  with as many features shows how far SGD stops from the best such model, and its fit to the
  corpus's own counts (``data_fit_kl``) how far sampling noise alone moves that model. The same
  rows for two layers and for the token presentation test the seed's depth conjecture.
- ``families``: a one-layer transformer with attention and a wide MLP; L1, TopK and JumpReLU SAEs
  of several sizes and sparsities on the final residual stream at the cue (what the unembedding
  reads: with no final LayerNorm the logits are exactly ``resid W_U + b_U``); the feature family
  of the latent at the tolerance the model itself reaches, beside the required count for the
  model's own curve. One model and SAE (:func:`_example`) are saved under ``example/`` (the
  model with :meth:`jaxfeat.toy.ToyModel.save`, the SAE with :func:`jaxfeat.sae.save_saelens`).
- ``ablations``: attention and a final LayerNorm on a narrow model: how far its curve leaves the
  ``d_mlp + 1``-feature class (mean KL from the best such fit of its own curve).

Wall times (``wall_s``, ``steps_per_s``, ``model_wall_s``) include the compilation of each new
shape. Figures go to ``figures/`` (``--figures``): trained loss against the bracket, family size
against the required count, and the example's family drawn with ``plot_family`` from its files.
:func:`summary` prints the numbers behind the README's verdicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxfeat
import jaxfeat.sae as js
from jaxfeat import targets, toy

from .launch import add_distributed_arguments, require_shared_paths, start_distributed
from .plots import for_mode, save
from .store import (
    Processes,
    ResultsStore,
    atomic_write_json,
    claim,
    load,
    release_compiled,
    row_id,
)

TARGETS = {
    "temperature": lambda n: targets.temperature(n=n),
    "temperature_nonmonotone": lambda n: targets.temperature(nonmonotone=True, n=n),
    "oscillating_1": lambda n: targets.oscillating(1, n=n),
    "oscillating_2": lambda n: targets.oscillating(2, n=n),
    "oscillating_3": lambda n: targets.oscillating(3, n=n),
    "oscillating_4": lambda n: targets.oscillating(4, n=n),
    "tuning_8": lambda n: targets.tuning_curves(8, width=0.15, n=n),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    n: int  # grid points of each target
    n_docs: int
    steps: int
    d_mlps: tuple[int, ...]  # neurons sweep, one layer, linear latent
    depth_d_mlps: tuple[int, ...]  # neurons sweep, two layers and the token presentation
    width: int  # families sweep: the transformer's d_mlp
    sae_sizes: tuple[int, ...]
    sae_l1s: tuple[float, ...]
    sae_ks: tuple[int, ...]
    sae_l0s: tuple[float, ...]  # JumpReLU L0 coefficients
    sae_samples: int
    sae_steps: int
    ablation_d_mlp: int
    fit_restarts: int
    k_max: int


QUICK = Settings(
    mode="quick",
    targets=("temperature_nonmonotone", "oscillating_1", "oscillating_2"),
    seeds=(0,),
    n=32,
    n_docs=100_000,
    steps=3000,
    d_mlps=(1, 2, 4, 8),
    depth_d_mlps=(2,),
    width=32,
    sae_sizes=(16, 64),
    sae_l1s=(3e-3,),
    sae_ks=(3,),
    sae_l0s=(1e-2,),
    sae_samples=8192,
    sae_steps=3000,
    ablation_d_mlp=4,
    fit_restarts=8,
    k_max=24,
)
FULL = dataclasses.replace(
    QUICK,
    mode="full",
    targets=tuple(TARGETS),
    seeds=(0, 1, 2),
    d_mlps=(1, 2, 4, 8, 16, 32),
    depth_d_mlps=(2, 4, 8),
    width=64,
    sae_sizes=(16, 64, 128),
    sae_l1s=(1e-3, 3e-3, 1e-2),
    sae_ks=(2, 4),
    sae_l0s=(3e-3, 3e-2),
    fit_restarts=16,
    k_max=48,
)
SMOKE = dataclasses.replace(
    QUICK,
    mode="smoke",
    targets=("temperature_nonmonotone",),
    n=8,
    n_docs=1000,
    steps=20,
    d_mlps=(2,),
    depth_d_mlps=(2,),
    width=8,
    sae_sizes=(8,),
    sae_ks=(2,),
    sae_samples=512,
    sae_steps=20,
    ablation_d_mlp=2,
    fit_restarts=1,
    k_max=4,
)
MODES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}


def mean_kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over the grid of KL(p || q), in nats (``p`` may have zeros)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    logs = np.log(np.where(p > 0, p, 1)) - np.log(np.maximum(q, 1e-300))
    return float(np.mean(np.sum(np.where(p > 0, p * logs, 0.0), axis=1)))


def _corpus(settings: Settings, name: str, seed: int, latent: str = "linear") -> toy.Corpus:
    target = TARGETS[name](settings.n)
    return toy.make_corpus(target, latent=latent, n_docs=settings.n_docs, seed=seed)


# Models that two sweeps train alike, kept for the second: the ablations sweep's plain model
# (no attention, no LayerNorm) is a neurons-sweep model. Emptied at the end of run_all.
_SHARED: dict[tuple, tuple[toy.ToyModel, float]] = {}
_TRAIN_DEFAULTS = {"n_layers": 1, "latent": "linear", "attention": True, "layernorm": False}


def _model_key(settings: Settings, name: str, seed: int, options: dict) -> tuple:
    return settings, name, seed, tuple(sorted((_TRAIN_DEFAULTS | options).items()))


def _train(settings: Settings, name: str, seed: int, **options) -> tuple[toy.ToyModel, float]:
    """The trained model and its training time (s)."""
    options = _TRAIN_DEFAULTS | options
    key = _model_key(settings, name, seed, options)
    if key in _SHARED:
        return _SHARED[key]
    shared = options == dict(_TRAIN_DEFAULTS, attention=False, d_mlp=settings.ablation_d_mlp)
    corpus = _corpus(settings, name, seed, options.pop("latent"))
    start = time.perf_counter()
    model = toy.train(corpus, steps=settings.steps, seed=seed, progress=False, **options)
    out = model, time.perf_counter() - start
    if shared:
        _SHARED[key] = out
    return out


def _todo(store: ResultsStore, ids: list[str], claims: Path | None) -> set[str]:
    """The rows this process may compute: its static share (:meth:`ResultsStore.mine`), or with
    ``claims`` every row not yet stored, each then taken by :func:`_take` as it starts."""
    return set(store.mine(ids)) if claims is None else {r for r in ids if not store.done(r)}


def _take(claims: Path | None, unit: str) -> bool:
    """Whether this process trains ``unit`` (one model and what is computed from it): always in
    a static split, else if it is the first to claim it."""
    take = claims is None or claim(claims, f"toy_models {unit}")
    if take:
        release_compiled()
    return take


def neurons(settings: Settings, store: ResultsStore, claims: Path | None = None) -> None:
    jobs = [
        (name, seed, d, 1, "linear")
        for name in settings.targets
        for seed in settings.seeds
        for d in settings.d_mlps
    ]
    jobs += [
        (name, seed, d, layers, latent)
        for name in settings.targets
        for seed in settings.seeds
        for d in settings.depth_d_mlps
        for layers, latent in ((2, "linear"), (1, "token"))
    ]
    bounds: dict[str, np.ndarray] = {}
    keys = [dict(target=n, seed=s, d_mlp=d, n_layers=ly, latent=lt) for n, s, d, ly, lt in jobs]
    ids = [row_id("neurons", key) for key in keys]
    mine = _todo(store, ids, claims)
    for (name, seed, d, layers, latent), key, rid in zip(jobs, keys, ids, strict=True):
        if rid not in mine or not _take(claims, rid):
            continue
        model, wall = _train(
            settings, name, seed, d_mlp=d, n_layers=layers, latent=latent, attention=False
        )
        target = model.corpus.target
        if name not in bounds:
            bounds[name] = jaxfeat.segmentation_lower_bound(target, settings.k_max).bounds
        curve = model.curve(n_contexts=1)
        k = d + 1
        fit = jaxfeat.fit(target, k=k, restarts=settings.fit_restarts, key=seed)
        own = jaxfeat.Target(target.t, curve, normalize=True)
        in_class = k <= settings.k_max and layers == 1 and latent == "linear"
        data_fit_kl = None
        if in_class:
            # A sampling-noise reference: the class's maximum-likelihood fit to the corpus's
            # own curve (what training sees), scored against p(t). Unregularised, it overfits
            # the counts once k is large, where SGD with weight decay may do better.
            data = jaxfeat.Target.from_counts(target.t, model.corpus.counts())
            data_fit = jaxfeat.fit(data, k=k, restarts=settings.fit_restarts, key=seed)
            data_fit_kl = mean_kl(target.probs, jaxfeat.probs(data_fit.params, target.t))
        store.add(
            {
                "id": rid,
                **key,
                "trained_kl": mean_kl(target.probs, curve),
                # The bound holds for the d_mlp + 1 feature class: one layer, linear latent.
                "bound_kl": float(bounds[name][k - 1]) if in_class else None,
                "fit_kl": float(fit.mean_kl),
                "data_fit_kl": data_fit_kl,
                "affine_rank": int(jaxfeat.affine_rank(own)),
                "final_loss": float(model.losses[-100:].mean()),
                "converged": model.converged,
                "outside_mass": float(model.outside_mass(n_contexts=1).max()),
                "wall_s": wall,
                "steps_per_s": settings.steps / wall,
            }
        )
        print(f"neurons {rid}: trained {store.rows[-1]['trained_kl']:.2e}", file=sys.stderr)
    store.merge(ids)


_SPARSITY = {"standard": "l1", "topk": "k", "jumprelu": "l0"}
# The example family's files, relative to the results directory: model/, sae/ and this record.
EXAMPLE_RECORD = "example/example.json"
# The toy models' results directory inside a ``jaxfeat reproduce`` run directory.
IN_RUN = "toy_models"


def _sae_specs(settings: Settings) -> list[tuple[str, int, float]]:
    """(architecture, d_sae, sparsity coefficient) of every SAE trained on each model."""
    grids = {"standard": settings.sae_l1s, "topk": settings.sae_ks, "jumprelu": settings.sae_l0s}
    return [(arch, size, sp) for arch in grids for size in settings.sae_sizes for sp in grids[arch]]


def _example(settings: Settings) -> tuple[str, int, tuple[str, int, float]]:
    """The (target, seed, SAE) whose family ``toy_family.png`` draws: a TopK SAE (its families
    are small enough to read) of the largest size on the two-period oscillation."""
    name = "oscillating_2" if "oscillating_2" in settings.targets else settings.targets[0]
    return name, settings.seeds[0], ("topk", max(settings.sae_sizes), max(settings.sae_ks))


def _family(
    sae: js.SAE, samples: dict, target: jaxfeat.Target, tol: float, **options
) -> js.FeatureFamily:
    return js.feature_family(
        sae,
        samples["resid"],
        samples["t"],
        samples["W_U"],
        tokens=np.arange(target.vocab),
        tol=tol,
        reference=samples["probs"],
        count=False,
        **options,
    )


def families(settings: Settings, store: ResultsStore, claims: Path | None = None) -> None:
    """Also saves the example model and SAE (:func:`_example`) under ``example/`` beside the
    results, so that the family figure can be redrawn from the files."""
    sae_specs = _sae_specs(settings)
    example = _example(settings)
    example_dir = store.path.parent / "example"
    models = [(name, seed) for name in settings.targets for seed in settings.seeds]
    # The process that trains a model trains all its SAEs: no model is trained twice.
    procs = store.processes
    order = []
    for j, (name, seed) in enumerate(models):
        rids = [
            row_id("families", dict(target=name, seed=seed, sae=arch, d_sae=size, sparsity=sp))
            for arch, size, sp in sae_specs
        ]
        order += rids
        if all(store.done(r) for r in rids):
            continue
        mine = j % procs.count == procs.index if claims is None else _take(claims, rids[0])
        if mine:
            _family_rows(settings, store, name, seed, rids, example, example_dir)
    store.merge(order)


def _family_rows(
    settings: Settings,
    store: ResultsStore,
    name: str,
    seed: int,
    rids: list[str],
    example: tuple,
    example_dir: Path,
) -> None:
    """Trains one model and its SAEs, and adds their rows."""
    sae_specs = _sae_specs(settings)
    model, wall = _train(settings, name, seed, d_mlp=settings.width, attention=True)
    target = model.corpus.target
    curve = model.curve()
    tol = max(mean_kl(target.probs, curve), 1e-4)  # the tolerance the model reaches
    own = jaxfeat.Target(target.t, curve, normalize=True)
    req = jaxfeat.required_features(
        own, tol, k_max=settings.k_max, restarts=settings.fit_restarts, key=seed
    )
    samples = model.mlp_out(settings.sae_samples, seed=seed + 1)
    x = samples["resid"]
    for rid, (arch, size, sparsity) in zip(rids, sae_specs, strict=True):
        if store.done(rid):
            continue
        value = int(sparsity) if arch == "topk" else sparsity
        start = time.perf_counter()
        sae = toy.train_sae(
            x,
            d_sae=size,
            architecture=arch,
            steps=settings.sae_steps,
            seed=seed,
            **{_SPARSITY[arch]: value},
        )
        jax.block_until_ready(sae)  # dispatch is asynchronous: time the work itself
        sae_wall = time.perf_counter() - start
        f = np.asarray(js.encode(sae, x))
        recon = np.asarray(js.decode(sae, f))
        fvu = float(np.sum((recon - x) ** 2) / np.sum((x - x.mean(0)) ** 2))
        # The spliced-in SAE's own error over the target's tokens, per sample (the usual
        # SAE metric; family_kl is on bin means with a refitted offset, so may be lower).
        inside = slice(0, target.vocab)
        b_U = np.asarray(model.params["b_U"])[inside]
        spliced = jax.nn.softmax(recon @ samples["W_U"][:, inside] + b_U, axis=-1)
        p_in = samples["probs"][:, inside]
        sae_kl = mean_kl(p_in / p_in.sum(1, keepdims=True), np.asarray(spliced))
        fam = _family(sae, samples, target, tol)
        if (name, seed, (arch, size, sparsity)) == example:
            # The record goes first and comes back last: files without it are partial.
            (store.path.parent / EXAMPLE_RECORD).unlink(missing_ok=True)
            model.save(example_dir / "model")
            js.save_saelens(sae, example_dir / "sae", metadata={"row": rid})
            meta = {
                "id": rid,
                "target": name,
                "seed": seed,
                "model_kl": tol,
                "settings": dataclasses.asdict(settings),
            }
            # Written last: its presence means the example is complete.
            atomic_write_json(store.path.parent / EXAMPLE_RECORD, meta)
        store.add(
            {
                "id": rid,
                "target": name,
                "seed": seed,
                "sae": arch,
                "d_sae": size,
                "sparsity": sparsity,
                "model_kl": tol,
                "model_wall_s": wall,
                "model_converged": model.converged,
                "required_k": req.k,
                "required_lower_bound": req.lower_bound,
                "family_size": int(fam.members.size),
                "subfamily_size": None if fam.subfamily is None else int(fam.subfamily.size),
                "family_kl": fam.kl,
                "family_search": fam.search,
                "sae_fvu": fvu,
                "sae_kl": sae_kl,
                "sae_alive": int((f > 0).any(0).sum()),
                "sae_l0": float((f > 0).sum(1).mean()),
                "sae_wall_s": sae_wall,
            }
        )
        print(f"families {rid}: family {fam.members.size}, required {req.k}", file=sys.stderr)


# The training-length check trains for this many times the sweep's steps.
LONGER = 4


def training_length(settings: Settings, store: ResultsStore, claims: Path | None = None) -> None:
    """The widest one-layer MLP-only model of each target (first seed), trained ``LONGER`` times
    as long: whether the neurons sweep's losses are capacity or training budget."""
    d, seed = max(settings.d_mlps), settings.seeds[0]
    steps = LONGER * settings.steps
    keys = [dict(target=name, seed=seed, d_mlp=d, steps=steps) for name in settings.targets]
    ids = [row_id("training_length", key) for key in keys]
    mine = _todo(store, ids, claims)
    for name, key, rid in zip(settings.targets, keys, ids, strict=True):
        if rid not in mine or not _take(claims, rid):
            continue
        corpus = _corpus(settings, name, seed)
        start = time.perf_counter()
        model = toy.train(corpus, d_mlp=d, attention=False, steps=steps, seed=seed, progress=False)
        wall = time.perf_counter() - start
        target = corpus.target
        store.add(
            {
                "id": rid,
                **key,
                "trained_kl": mean_kl(target.probs, model.curve(n_contexts=1)),
                "converged": model.converged,
                "wall_s": wall,
            }
        )
    store.merge(ids)


def ablations(settings: Settings, store: ResultsStore, claims: Path | None = None) -> None:
    d = settings.ablation_d_mlp
    keys = [
        dict(target=name, seed=seed, d_mlp=d, attention=attention, layernorm=layernorm)
        for name in settings.targets
        for seed in settings.seeds
        for attention, layernorm in ((False, False), (True, False), (False, True))
    ]
    ids = [row_id("ablations", key) for key in keys]
    mine = _todo(store, ids, claims)
    jobs = list(zip(keys, ids, strict=True))
    if claims is not None:
        # A plain row's model is a neurons-sweep model: the process that holds it claims the
        # row before any other, so that another process does not train it again.
        def held(job: tuple[dict, str]) -> bool:
            k = job[0]
            options = dict(d_mlp=d, attention=k["attention"], layernorm=k["layernorm"])
            return _model_key(settings, k["target"], k["seed"], options) in _SHARED

        jobs.sort(key=lambda job: not held(job))
    for key, rid in jobs:
        if rid not in mine or not _take(claims, rid):
            continue
        model, _ = _train(
            settings,
            key["target"],
            key["seed"],
            d_mlp=d,
            attention=key["attention"],
            layernorm=key["layernorm"],
        )
        curve = model.curve()
        own = jaxfeat.Target(model.corpus.target.t, curve, normalize=True)
        fit = jaxfeat.fit(own, k=d + 1, restarts=settings.fit_restarts, key=key["seed"])
        store.add(
            {
                "id": rid,
                **key,
                "class_gap_kl": float(fit.mean_kl),
                "trained_kl": mean_kl(model.corpus.target.probs, curve),
            }
        )
    store.merge(ids)


def figure_name(settings: Settings, stem: str) -> str:
    """``toy_<stem>.png``, named for the settings' mode (:func:`.plots.for_mode`)."""
    return for_mode(f"toy_{stem}.png", settings.mode)


def _load_example(settings: Settings, out: Path):
    """(record, model, SAE, samples) of the saved example, or None when there is none."""
    record = Path(out) / EXAMPLE_RECORD
    if not record.exists():
        return None
    example = json.loads(record.read_text())
    # Rebuilt with the settings the example was computed with, not today's.
    used = example.get("settings", {})
    used = dataclasses.replace(
        settings, **{f: used[f] for f in ("n", "n_docs", "sae_samples") if f in used}
    )
    model = toy.load_model(
        record.parent / "model", _corpus(used, example["target"], example["seed"])
    )
    sae = js.load_saelens(record.parent / "sae")
    return example, model, sae, model.mlp_out(used.sae_samples, seed=example["seed"] + 1)


# (min_variation, min_share): feature_family's defaults, looser, and every feature that moves.
MEMBERSHIP = ((0.2, 0.01), (0.05, 0.001), (0.0, 0.0))
MEMBERSHIP_RECORD = "example/membership.json"


def membership(settings: Settings, out: Path) -> list[dict] | None:
    """The example's family at each of :data:`MEMBERSHIP`'s thresholds: how much of the model's
    curve the features left out by the defaults carry. Kept in ``example/membership.json``
    (recomputed when the example changes); None without an example."""
    out = Path(out)
    loaded = _load_example(settings, out)
    if not loaded:
        return None
    example, model, sae, samples = loaded
    cached = load_json(out / MEMBERSHIP_RECORD)
    if cached and cached.get("example") == example:
        return cached["rows"]
    rows = []
    for min_variation, min_share in MEMBERSHIP:
        start = time.perf_counter()
        fam = _family(
            sae,
            samples,
            model.corpus.target,
            example["model_kl"],
            min_variation=min_variation,
            min_share=min_share,
        )
        rows.append(
            {
                "min_variation": min_variation,
                "min_share": min_share,
                "family_size": int(fam.members.size),
                "family_kl": fam.kl,
                "subfamily_size": None if fam.subfamily is None else int(fam.subfamily.size),
                "search": fam.search,
                "wall_s": time.perf_counter() - start,
            }
        )
    atomic_write_json(out / MEMBERSHIP_RECORD, {"example": example, "rows": rows})
    return rows


def _family_figure(settings: Settings, rows: list[dict], censored: int):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    archs = [a for a in ("standard", "topk", "jumprelu") if any(r["sae"] == a for r in rows)]
    labels = {"standard": "L1", "topk": "TopK", "jumprelu": "JumpReLU"}
    fig = Figure(figsize=(4.6 * len(archs), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True))
    top = 1 + max([r["family_size"] for r in rows] + [r["required_k"] for r in rows])
    sizes = sorted({r["d_sae"] for r in rows})
    markers = {size: "os^Dv<>ph*"[i % 10] for i, size in enumerate(sizes)}
    names = list(dict.fromkeys(r["target"] for r in rows))
    for ax, arch in zip(axes, archs, strict=True):
        for i, name in enumerate(names):
            for size, marker in markers.items():
                mine = [
                    r
                    for r in rows
                    if r["target"] == name and r["sae"] == arch and r["d_sae"] == size
                ]
                if not mine:
                    continue
                # Spread the points of one required k apart so that none hides another.
                jitter = np.linspace(-0.2, 0.2, len(mine)) if len(mine) > 1 else [0.0]
                x = [r["required_k"] + j for r, j in zip(mine, jitter, strict=True)]
                # Filled: the smallest sub-family within the model's own error; hollow: the
                # whole family, which misses that error.
                for reached in (True, False):
                    pts = [
                        (xi, r["subfamily_size"] if reached else r["family_size"])
                        for xi, r in zip(x, mine, strict=True)
                        if (r["subfamily_size"] is not None) == reached
                    ]
                    if pts:
                        ax.scatter(
                            *zip(*pts, strict=True),
                            s=24,
                            marker=marker,
                            facecolors=f"C{i % 10}" if reached else "none",
                            edgecolors=f"C{i % 10}",
                        )
        ax.plot([0, top], [0, top], "k:", lw=1)
        ax.set(
            title=f"{labels[arch]} SAEs: family size against the count",
            xlabel="required k for the model's own curve (features)",
            ylabel="SAE features in the family (features)",
            xlim=(0, top),
            ylim=(0, top),
        )
    by_target = [
        Line2D([], [], color=f"C{i % 10}", marker="o", ls="none", label=name)
        for i, name in enumerate(names)
    ]
    by_size = [
        Line2D([], [], color="k", marker=m, ls="none", label=f"d_sae = {size}")
        for size, m in markers.items()
    ]
    keys = [
        Line2D([], [], color="k", ls=":", label="family = required"),
        Line2D([], [], color="k", marker="o", ls="none", label="sub-family within model error"),
        Line2D(
            [], [], color="k", marker="o", mfc="none", ls="none", label="whole family (misses it)"
        ),
    ]
    # Below the diagonal is where a family smaller than the count would sit: mostly empty.
    if len(axes) == 1:
        axes[0].legend(handles=by_target + by_size + keys, fontsize=7, loc="lower right")
    else:
        axes[0].legend(handles=by_target, fontsize=7, loc="lower right")
        axes[-1].legend(handles=by_size + keys, fontsize=7, loc="lower right")
    seeds = ", ".join(map(str, settings.seeds))
    fig.suptitle(
        "The latent's feature family in SAEs of trained one-layer transformers "
        + (f"(seeds {seeds})" if len(settings.seeds) > 1 else f"(seed {seeds})")
        + (
            f"; {censored} rows whose required k exceeds k_max = {settings.k_max} not drawn"
            if censored
            else ""
        )
    )
    return fig


def figures(settings: Settings, out: Path, figures_dir: Path) -> list[Path]:
    import matplotlib.ticker
    from matplotlib.figure import Figure

    paths = []
    rows = load(out / "neurons.json")["rows"]
    longer = (load(out / "training_length.json") or {"rows": []})["rows"]
    n = len(settings.targets)
    cols = min(n, 4)
    fig = Figure(figsize=(4.6 * cols, 4.0 * -(-n // cols)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(-(-n // cols), cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_axis_off()
    spread = len(settings.seeds) > 1
    for ax, name in zip(axes, settings.targets, strict=False):
        mine = [r for r in rows if r["target"] == name]
        curves = [
            ((1, "linear"), "trained_kl", "o-", "trained model (SGD)"),
            ((1, "linear"), "fit_kl", "s--", "jaxfeat fit to p(t), same k"),
            ((1, "linear"), "data_fit_kl", "x-.", "jaxfeat fit to the corpus's samples"),
            ((1, "linear"), "bound_kl", "v:", "certified lower bound (0 drawn at 1e-9)"),
            ((2, "linear"), "trained_kl", "^", "2 layers, linear latent (outside the class)"),
            ((1, "token"), "trained_kl", "D", "1 layer, token latent (outside the class)"),
        ]
        ticks: set[int] = set()
        for (layers, latent), field, style, label in curves:
            by_x: dict[int, list[float]] = {}
            for r in mine:
                if (r["n_layers"], r["latent"]) == (layers, latent) and r.get(field) is not None:
                    # Zero bounds drawn at 1e-9 so the log axis keeps them.
                    by_x.setdefault(r["d_mlp"] * layers + 1, []).append(max(r[field], 1e-9))
            if not by_x:
                continue
            x = sorted(by_x)
            ticks.update(x)
            med = np.array([np.median(by_x[v]) for v in x])
            lo = med - np.array([min(by_x[v]) for v in x])
            hi = np.array([max(by_x[v]) for v in x]) - med
            ax.errorbar(
                x, med, yerr=[lo, hi] if spread else None, fmt=style, capsize=2, label=label, ms=4
            )
        extra = [r for r in longer if r["target"] == name]
        if extra:
            ax.plot(
                [r["d_mlp"] + 1 for r in extra],
                [r["trained_kl"] for r in extra],
                "*",
                ms=9,
                label=f"trained {LONGER}x as long (seed {extra[0]['seed']})",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(ticks), [str(v) for v in sorted(ticks)])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(
            title=f"{name}: trained loss and the bracket",
            xlabel="MLP neurons (all layers) + 1 for the direct path",
            ylabel="mean KL to the target (nats)",
        )
    axes[0].legend(fontsize=7)
    seeds = ", ".join(map(str, settings.seeds))
    fig.suptitle(
        "One-layer MLP-only models trained on each target's corpus, against jaxfeat's bracket"
        + (f" (median and range over seeds {seeds})" if spread else f" (seed {seeds})")
    )
    paths.append(save(fig, figures_dir / figure_name(settings, "trained_vs_bracket")))

    rows = (load(out / "families.json") or {"rows": []})["rows"]
    # No k <= k_max reached the model's error: such rows have no x to sit at.
    censored = sum(r["required_k"] is None for r in rows)
    rows = [r for r in rows if r["required_k"] is not None]
    if rows:
        fig = _family_figure(settings, rows, censored)
        paths.append(save(fig, figures_dir / figure_name(settings, "family_vs_required")))
    loaded = _load_example(settings, out)
    if loaded:
        example, model, sae, samples = loaded
        name, seed, target = example["target"], example["seed"], model.corpus.target
        fam = _family(sae, samples, target, example["model_kl"])
        unit = "temperature (°C)" if name.startswith("temperature") else "latent t (grid units)"
        sae_name = f"{sae.architecture} SAE, d_sae = {sae.d_sae}"
        fig = js.plot_family(
            fam,
            latent_name=unit,
            token_names=target.tokens,
            title=f"{name} (seed {seed}), {sae_name}",
        )
        paths.append(save(fig, figures_dir / figure_name(settings, "family")))
    return paths


SWEEPS = ("neurons", "families", "ablations", "training_length")


def load_json(path: Path) -> dict | None:
    """A JSON file's object, or None when the file does not exist."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else None


def _span(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, med, hi = np.min(values), np.median(values), np.max(values)
    return f"{med:.3g} [{lo:.3g}, {hi:.3g}]"


def _ranks(v) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    values, inverse = np.unique(np.asarray(v, np.float64), return_inverse=True)
    order = np.argsort(np.asarray(v, np.float64), kind="stable")
    positions = np.empty(len(order))
    positions[order] = np.arange(len(order))
    sums = np.bincount(inverse, weights=positions, minlength=len(values))
    return (sums / np.bincount(inverse, minlength=len(values)))[inverse]


def _spearman(x, y) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def summary(out: Path) -> str:
    """The numbers behind the README's verdicts, from the results in ``out``: medians with
    [min, max] over seeds, SAE sizes and sparsities (each line says over what)."""
    out = Path(out)
    rows = {s: (load(out / f"{s}.json") or {"rows": []})["rows"] for s in SWEEPS}
    lines = []
    neurons = rows["neurons"]
    exact = [r for r in neurons if r["bound_kl"] is not None]
    if exact:
        margin = min(r["trained_kl"] - r["bound_kl"] for r in exact)
        below = sum(r["trained_kl"] < r["bound_kl"] for r in exact)
        lines.append(
            f"exactness: {len(exact)} one-layer MLP-only rows, {below} below the certified bound "
            f"(smallest margin {margin:.2e} nats)"
        )
        for field, what in (
            ("fit_kl", "p(t)"),
            ("data_fit_kl", "the corpus's counts (maximum likelihood, unregularised)"),
        ):
            ratio = [
                r["trained_kl"] / max(r[field], 1e-12) for r in exact if r.get(field) is not None
            ]
            lines.append(
                f"SGD against jaxfeat's fit to {what} at the same k: trained/fit {_span(ratio)};"
                f" within 2x in {sum(q <= 2 for q in ratio)} of {len(ratio)} rows"
            )
        for d in sorted({r["d_mlp"] for r in exact}):
            mine = [r for r in exact if r["d_mlp"] == d]
            lines.append(
                f"  d_mlp {d}: trained {_span([r['trained_kl'] for r in mine])}, "
                f"fit {_span([r['fit_kl'] for r in mine])}, "
                f"fit to the data {_span([r.get('data_fit_kl') for r in mine])}, "
                f"bound {_span([r['bound_kl'] for r in mine])} (over targets and seeds)"
            )
        unconverged = sum(not r["converged"] for r in neurons)
        lines.append(
            f"training: {_span([r['steps_per_s'] for r in neurons])} steps/s, "
            f"{_span([r['wall_s'] for r in neurons])} s per MLP-only model; "
            f"{unconverged} of {len(neurons)} not converged"
        )
    # Depth and presentation at equal total neurons (n_layers * d_mlp).
    base = {(r["target"], r["seed"], r["d_mlp"]): r for r in exact}
    for layers, latent in ((2, "linear"), (1, "token")):
        pairs = [
            (r, base.get((r["target"], r["seed"], r["d_mlp"] * r["n_layers"])))
            for r in neurons
            if r["n_layers"] == layers and r["latent"] == latent
        ]
        pairs = [(r, b) for r, b in pairs if b is not None]
        if pairs:
            better = sum(r["trained_kl"] < b["trained_kl"] for r, b in pairs)
            ratio = [r["trained_kl"] / b["trained_kl"] for r, b in pairs]
            lines.append(
                f"{layers} layer(s), {latent} latent against 1 layer, linear, same total "
                f"neurons: lower loss in {better} of {len(pairs)}; loss ratio {_span(ratio)}"
            )
    families = rows["families"]
    if families:
        lines.append(
            "families (per target: required k over seeds; family size over seeds, "
            "SAE sizes and sparsities):"
        )
        means = {}
        for name in dict.fromkeys(r["target"] for r in families):
            mine = [r for r in families if r["target"] == name]
            # None: no k <= k_max reached the tolerance (left out of the means, and counted).
            req = {r["seed"]: r["required_k"] for r in mine}
            known = [k for k in req.values() if k is not None]
            parts = []
            for arch in ("standard", "topk", "jumprelu"):
                a = [r for r in mine if r["sae"] == arch]
                if a:
                    parts.append(f"{arch} {_span([r['family_size'] for r in a])}")
                    if known:
                        means.setdefault(arch, []).append(
                            (np.mean(known), np.mean([r["family_size"] for r in a]))
                        )
            censored = len(req) - len(known)
            lines.append(
                f"  {name}: required k {_span(known)}"
                + (f" ({censored} seeds above k_max)" if censored else "")
                + "; "
                + "; ".join(parts)
            )
        for arch, pts in means.items():
            x, y = zip(*pts, strict=True)
            lines.append(
                f"  {arch}: Spearman rank correlation of mean family size with mean required k "
                f"over targets {_spearman(x, y):.2f}"
            )
        for arch in ("standard", "topk", "jumprelu"):
            a = [r for r in families if r["sae"] == arch]
            if a:
                ratio = [r["family_size"] / r["required_k"] for r in a if r["required_k"]]
                sub = sum(r["subfamily_size"] is not None for r in a)
                lines.append(
                    f"  {arch}: family / required {_span(ratio)}; larger in "
                    f"{sum(q > 1 for q in ratio)} of {len(ratio)}; a sub-family within the "
                    f"model's error in {sub} of {len(a)}; L0 {_span([r['sae_l0'] for r in a])}; "
                    f"FVU {_span([r['sae_fvu'] for r in a])}"
                )
        for size in sorted({r["d_sae"] for r in families}):
            a = [r for r in families if r["d_sae"] == size]
            lines.append(f"  d_sae {size}: family size {_span([r['family_size'] for r in a])}")
        lines.append(
            f"  model error {_span([r['model_kl'] for r in families])} nats; family KL "
            f"{_span([r['family_kl'] for r in families])} nats; the whole SAE spliced in "
            f"{_span([r.get('sae_kl') for r in families])} nats"
        )
    for r in rows["training_length"]:
        base_row = base.get((r["target"], r["seed"], r["d_mlp"]))
        if base_row:
            lines.append(
                f"{r['target']}, d_mlp {r['d_mlp']}: {base_row['trained_kl']:.2e} nats after "
                f"the sweep's steps, {r['trained_kl']:.2e} after {r['steps']} (fit "
                f"{base_row['fit_kl']:.2e}, fit to the data {base_row['data_fit_kl']:.2e})"
            )
    cached = load_json(out / MEMBERSHIP_RECORD)
    if cached:
        ex = cached["example"]
        lines.append(
            f"membership thresholds, example {ex['id']} (model error {ex['model_kl']:.2e}):"
        )
        for r in cached["rows"]:
            lines.append(
                f"  min_variation {r['min_variation']}, min_share {r['min_share']}: "
                f"{r['family_size']} members, family KL {r['family_kl']:.2e}, smallest within "
                f"the model's error {r['subfamily_size']} ({r['search']}, {r['wall_s']:.0f} s)"
            )
    ablation_rows = rows["ablations"]
    for attention, layernorm in ((False, False), (True, False), (False, True)):
        a = [
            r for r in ablation_rows if r["attention"] == attention and r["layernorm"] == layernorm
        ]
        if a:
            lines.append(
                f"attention={attention}, layernorm={layernorm}: distance from the class "
                f"{_span([r['class_gap_kl'] for r in a])} nats; trained "
                f"{_span([r['trained_kl'] for r in a])} nats"
            )
    return "\n".join(lines)


def run_all(
    settings: Settings,
    out: Path,
    figures_dir: Path,
    *,
    fresh: bool = False,
    processes: Processes | None = None,
) -> list[Path]:
    """Runs the sweeps into ``out`` (resuming rows already there unless ``fresh``) and draws the
    figures into ``figures_dir``; returns the figure paths.

    In a job of several processes each trains its share of the models (see
    :func:`jaxfeat.experiments.sweeps.run_sweep`) and process 0 draws the figures.
    """
    procs = processes or Processes()
    compute(settings, out, fresh=fresh, processes=procs)
    if procs.index != 0:
        return []
    return figures(settings, Path(out), Path(figures_dir))


def compute(
    settings: Settings,
    out: Path,
    *,
    fresh: bool = False,
    processes: Processes | None = None,
    claims: str | Path | None = None,
) -> None:
    """The sweeps of :func:`run_all` without the figures: every row into ``out``.

    ``jaxfeat reproduce`` runs it in each of its worker processes
    (:mod:`jaxfeat.experiments.workers`) with ``claims``, the directory of the run's claim
    files: each worker then trains the models it is the first to claim (one model and the rows
    computed from it, e.g. a families model and all its SAEs) instead of a static share, so
    that the models spread over the workers as they finish. The caller merges the parts by
    calling it again as process 0, and draws the figures after.
    """
    procs = processes or Processes()
    config = dataclasses.asdict(settings)
    if fresh and procs.index == 0:
        (Path(out) / EXAMPLE_RECORD).unlink(missing_ok=True)
    stores = {
        name: ResultsStore(
            Path(out) / f"{name}.json", name, config=config, fresh=fresh, processes=procs
        )
        for name in SWEEPS
    }
    # Each process trains and fits its own rows: no call may wait for the other processes.
    with jaxfeat.distributed.local():
        try:
            c = None if claims is None else Path(claims)
            neurons(settings, stores["neurons"], c)
            families(settings, stores["families"], c)
            ablations(settings, stores["ablations"], c)
            training_length(settings, stores["training_length"], c)
        finally:
            _SHARED.clear()


# What a rerun must reproduce: the integer counts exactly, the losses to this relative tolerance
# (training is seeded, but float reductions may differ between machines).
_COUNTS = ("family_size", "subfamily_size", "required_k", "required_lower_bound", "affine_rank")
_LOSSES = ("trained_kl", "fit_kl", "bound_kl", "family_kl", "class_gap_kl")
RELATIVE_TOL = 0.1


def compare(reference: Path, run: Path, *, show: int = 5) -> str:
    """One line per sweep: how many rows of ``run`` agree with ``reference`` (same counts, losses
    within 10% or 1e-6 nats), are new, or are missing; then up to ``show`` disagreeing rows per
    sweep, each with the fields that differ (reference -> run)."""
    lines = []
    for sweep in SWEEPS:
        ref = {
            r["id"]: r for r in (load(Path(reference) / f"{sweep}.json") or {"rows": []})["rows"]
        }
        new = {r["id"]: r for r in (load(Path(run) / f"{sweep}.json") or {"rows": []})["rows"]}

        def differ(a, b):
            counts = [k for k in _COUNTS if a.get(k) != b.get(k)]
            losses = [
                k
                for k in _LOSSES
                if a.get(k) is not None
                and b.get(k) is not None
                and abs(a[k] - b[k]) > max(RELATIVE_TOL * abs(a[k]), 1e-6)
            ]
            return counts + losses

        diffs = {i: differ(ref[i], new[i]) for i in new if i in ref}
        diffs = {i: d for i, d in diffs.items() if d}
        lines.append(
            f"{sweep}: {len(new)} rows, {len(new.keys() & ref.keys()) - len(diffs)} agree, "
            f"{len(set(new) - set(ref))} new, {len(set(ref) - set(new))} missing"
        )
        for i, fields in list(diffs.items())[:show]:
            change = ", ".join(
                f"{k} {_short(ref[i].get(k))} -> {_short(new[i].get(k))}" for k in fields
            )
            lines.append(f"  {i.split('/', 1)[-1]}: {change}")
        if len(diffs) > show:
            lines.append(f"  ... and {len(diffs) - show} more")
    return "\n".join(lines)


def _short(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None, repo: Path | None = None) -> Path:
    """Runs the sweeps (resuming earlier results) and draws the figures; returns the results
    directory. ``repo`` is where ``benchmarks/results`` and ``figures`` live (default: the
    current directory)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_true")
    group.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figures", type=Path)
    parser.add_argument("--fresh", action="store_true", help="discard earlier results")
    add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    procs = start_distributed(args)
    settings = FULL if args.full else SMOKE if args.smoke else QUICK
    if args.smoke:
        require_shared_paths(parser, procs, args.out, args.figures)
    scratch = Path(tempfile.mkdtemp()) if args.smoke else None
    repo = repo or Path.cwd()
    out = args.out or (scratch or repo / "benchmarks" / "results") / f"toy_models_{settings.mode}"
    figures_dir = args.figures or (scratch / "figures" if scratch else repo / "figures")
    start = time.perf_counter()
    for path in run_all(settings, out, figures_dir, fresh=args.fresh, processes=procs):
        print(f"figure {path}", file=sys.stderr)
    if procs.index != 0:  # process 0 reports
        return out
    membership(settings, out)
    print(summary(out))
    print(f"done in {time.perf_counter() - start:.0f} s; results in {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
