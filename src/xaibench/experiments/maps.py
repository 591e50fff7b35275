"""The MAPS recipe: models x methods x percentiles -> EMIs -> image-level behaviour -> comparison with
observers (``xaibench experiment maps CONFIG --out DIR``).

Config::

    name = "MAPS on digits"
    seed = 0
    percentiles = [50, 60, 70, 80, 90, 95]   # EMI percentiles (MAPS: 50 ... 99)
    proxy_percentile = 75                    # the best-method proxy's EMIs (MAPS: 75)
    fill = "maps"                            # MAPS' grey (0.5 after ImageNet normalisation) or a pixel value / list
    splits = 20                              # random half-splits for the proxy (MAPS: 20)
    n_boot = 2000                            # bootstrap resamples of the consistency intervals
    batch_size = 64
    emi_source = ""                          # model whose maps make the observers' EMIs ("" = the best model)

    [data]                                   # spec, split ("test"), n (all), image_size
    spec = "builtin:digits"

    [models.cnn]                             # label -> a load_model spec ...
    spec = "builtin:digits-cnn"
    [models.small]                           # ... or a training config for xaibench's trainer
    train = { model = { spec = "builtin:digits-cnn" }, data = { spec = "builtin:digits" }, epochs = 1 }

    [methods.saliency]                       # label -> registry name and parameters, as in run configs
    [methods.gradcam]

    [observers.humans]                       # recorded trials: CSV per condition (image index, correct)
    root = "behaviour/humans"                # folder of the files (default: the working directory)
    clean = "humans_clean.csv"
    emi = { "saliency/75" = "humans_saliency_75.csv" }   # EMIs of `emi_source`'s maps
    # or a SIMULATED observer: behaviour drawn from one model's I1 plus binomial trial noise
    [observers.simulated]
    simulate = "cnn"
    trials = 20

Steps: ``models`` (resolve specs, train where asked with the one trainer, into ``DIR/models/<label>``,
resumable), ``clean`` (softmax and
B.I1 of every model on the clean images), ``maps`` (every model's maps by every method, stored as
float16), ``emis`` (B.I1 of every model on EMIs of every model's maps, method and percentile;
EMIs are made batch by batch and never stored), ``observers`` (per-image I1 and split-half
reliability of each observer and condition), ``analysis`` (model consistency with each
observer, best model, EMI consistency per method and percentile, best-method proxy and its
ground-truth check). Tables: ``models``, ``i1_clean``, ``i1_emi``, ``observer_i1``,
``reliability``, ``model_consistency``, ``emi_consistency``, ``proxy``, ``best_method``,
``ground_truth``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench.config import entries, lookup
from xaibench.errors import InputError
from xaibench.experiments.base import (
    REQUIRED,
    ExperimentConfig,
    ExperimentDir,
    Plot,
    Recipe,
    Step,
    StepContext,
    Table,
    Text,
    located_path,
    stored_path,
)
from xaibench.files import write_atomic, write_text

DEFAULT_PERCENTILES = [50, 60, 65, 70, 75, 80, 85, 90, 95, 97, 98, 99]


# --- config ------------------------------------------------------------------------------------


def _validate(cfg: ExperimentConfig) -> None:
    from xaibench.explainers import METHODS

    for p in (*cfg["percentiles"], cfg["proxy_percentile"]):
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 100:
            raise InputError(f"config percentiles: each must be a number in [0, 100], got {p!r}")
    if "spec" not in cfg["data"]:
        raise InputError("config [data]: missing required key 'spec'")
    models = cfg["models"]
    if len(models) < 2:
        raise InputError("config [models]: MAPS compares models; give at least two")
    for label, table in models.items():
        if not isinstance(table, dict) or len({"spec", "train"} & set(table)) != 1 or set(table) - {"spec", "train"}:
            raise InputError(f"config [models.{label}]: give exactly one of 'spec' (a model spec) or 'train' (a table)")
    for label, where, name, params in entries(cfg["methods"], "methods", "method"):
        lookup(where, METHODS, name)
    if cfg["emi_source"] and cfg["emi_source"] not in models:
        raise InputError(f"config emi_source = {cfg['emi_source']!r} is not a model label ({', '.join(models)})")
    fill = cfg["fill"]
    if fill != "maps" and not isinstance(fill, (int, float, list)):
        raise InputError(f"config fill: 'maps' or a pixel value in [0, 1] (or one per channel), got {fill!r}")
    for label, obs in cfg["observers"].items():
        where = f"[observers.{label}]"
        if not isinstance(obs, dict):
            raise InputError(f"config {where}: expected a table")
        if "simulate" in obs:
            if obs["simulate"] not in models:
                raise InputError(f"config {where}.simulate = {obs['simulate']!r} is not a model label ({', '.join(models)})")
            if not isinstance(obs.get("trials", 20), int) or obs.get("trials", 20) < 2:
                raise InputError(f"config {where}.trials must be an integer >= 2")
        elif "clean" not in obs:
            raise InputError(f"config {where}: give 'simulate = MODEL' or recorded trial files ('clean', 'emi')")
        else:
            root = Path(obs.get("root", "."))
            for file in (obs["clean"], *obs.get("emi", {}).values()):
                if not (root / file).is_file():
                    raise InputError(f"config {where}: behaviour file not found: {root / file}")
        for key in obs.get("emi", {}):
            method, _, percentile = str(key).partition("/")
            if method not in cfg["methods"] or not percentile.replace(".", "", 1).isdigit():
                raise InputError(f"config {where}.emi: keys are 'METHOD/PERCENTILE' with a method label, got {key!r}")


SCHEMA = {
    "data": ((dict,), REQUIRED),
    "models": ((dict,), REQUIRED),
    "methods": ((dict,), REQUIRED),
    "observers": ((dict,), {}),
    "percentiles": ((list,), DEFAULT_PERCENTILES),
    "proxy_percentile": ((int, float), 75),
    "fill": ((str, int, float, list), "maps"),
    "splits": ((int,), 20),
    "n_boot": ((int,), 2000),
    "batch_size": ((int,), 64),
    "emi_source": ((str,), ""),
}


# --- shared helpers -----------------------------------------------------------------------------


def _fill(cfg: ExperimentConfig) -> Any:
    from xaibench.maps import MAPS_FILL

    return MAPS_FILL if cfg["fill"] == "maps" else cfg["fill"]


def _dataset(cfg: ExperimentConfig) -> tuple[Any, list[int]]:
    from xaibench.data import load_dataset
    from xaibench.runner.shard import select_positions

    data = cfg["data"]
    dataset = load_dataset(data["spec"], split=data.get("split", "test"), image_size=data.get("image_size"))
    return dataset, select_positions(len(dataset), data.get("n"), cfg.seed)


def _batches(cfg: ExperimentConfig, device: str) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """(rows, images, labels) of the experiment's images, `batch_size` at a time."""
    from xaibench.data import collate

    dataset, positions = _dataset(cfg)
    size = cfg["batch_size"]
    for start in range(0, len(positions), size):
        batch = collate([dataset[i] for i in positions[start : start + size]])
        labels = torch.as_tensor(batch.labels).long()
        yield slice(start, start + batch.images.shape[0]), batch.images.to(device), labels.to(device)


def _models(exp: ExperimentDir | StepContext) -> dict[str, str]:
    """Label -> model spec (trained models are stored relative to the experiment directory)."""
    specs = json.loads((exp.root / "steps" / "models" / "models.json").read_text())
    config = exp.cfg.raw if isinstance(exp, StepContext) else exp.config
    return {label: f"file:{located_path(exp.root, spec[len('file:'):])}" if "train" in config["models"][label] else spec
            for label, spec in specs.items()}


def _load(spec: str, device: str) -> torch.nn.Module:
    from xaibench.models import load_model

    return load_model(spec, device=device).eval()


def _i1(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    from xaibench.maps import i1

    return i1(torch.softmax(logits.double(), dim=1), labels).cpu().numpy()


def _maps_path(root: Path, model: str, method: str) -> Path:
    return root / "steps" / "maps" / model / f"{method}.pt"


# --- steps --------------------------------------------------------------------------------------


def _step_models(ctx: StepContext) -> None:
    specs = {}
    for label, table in ctx.cfg["models"].items():
        if "spec" in table:
            specs[label] = table["spec"]
            continue
        from xaibench.training import train

        raw = {"seed": ctx.seed("train", label), "device": ctx.cfg.device, **table["train"]}
        # outside the step's folder, so an interrupted training resumes from its checkpoint
        result = train(raw, ctx.root.resolve() / "models" / label, resume=True, progress=False)
        specs[label] = f"file:{stored_path(ctx.root, result.model_path)}"
    write_text(ctx.folder / "models.json", json.dumps(specs, indent=1))
    ctx.write_table("models", pd.DataFrame({"model": list(specs), "spec": list(specs.values())}))


def _step_clean(ctx: StepContext) -> None:
    rows = []
    for label, spec in _models(ctx).items():
        model = _load(spec, ctx.cfg.device)
        for rows_, images, labels in _batches(ctx.cfg, ctx.cfg.device):
            with torch.no_grad():
                logits = model(images)
            rows.append(pd.DataFrame({"model": label, "image": np.arange(rows_.start, rows_.stop),
                                      "label": labels.cpu().numpy(), "i1": _i1(logits, labels),
                                      "correct": (logits.argmax(1) == labels).cpu().numpy()}))
    ctx.write_table("i1_clean", pd.concat(rows, ignore_index=True))


def _step_maps(ctx: StepContext) -> None:
    from xaibench.explainers import METHODS, explainer

    for label, spec in _models(ctx).items():
        model = _load(spec, ctx.cfg.device)
        for method, _, name, params in entries(ctx.cfg["methods"], "methods", "method"):
            if "seed" in METHODS.get(name).params and "seed" not in params:
                params = {**params, "seed": ctx.seed("maps", label, method)}
            explain = explainer(name, model, **params)
            parts = []
            for _, images, labels in _batches(ctx.cfg, ctx.cfg.device):
                parts.append(explain(images, labels).detach().to("cpu", torch.float16))
            path = ctx.folder / label / f"{method}.pt"
            maps = torch.cat(parts)
            write_atomic(path, lambda p: torch.save(maps, p))


def _step_emis(ctx: StepContext) -> None:
    from xaibench.maps import emi

    models = _models(ctx)
    loaded = {label: _load(spec, ctx.cfg.device) for label, spec in models.items()}
    percentiles = sorted({*ctx.cfg["percentiles"], ctx.cfg["proxy_percentile"]})
    fill = _fill(ctx.cfg)
    rows = []
    for source in models:
        for method in ctx.cfg["methods"]:
            maps = torch.load(_maps_path(ctx.root, source, method), weights_only=True)
            for rows_, images, labels in _batches(ctx.cfg, ctx.cfg.device):
                batch_maps = maps[rows_].to(ctx.cfg.device, torch.float32)
                for p in percentiles:
                    masked = emi(images, batch_maps, p, fill=fill)
                    for target, model in loaded.items():
                        with torch.no_grad():
                            logits = model(masked)
                        rows.append(pd.DataFrame({
                            "source": source, "method": method, "percentile": float(p), "model": target,
                            "image": np.arange(rows_.start, rows_.stop), "i1": _i1(logits, labels),
                        }))
    ctx.write_table("i1_emi", pd.concat(rows, ignore_index=True))


def _emi_source(ctx: StepContext | ExperimentDir, clean: pd.DataFrame) -> str:
    """The model whose maps made the observers' EMIs: configured, else the model with the highest
    clean accuracy (simulated observers then see the EMIs a study would show)."""
    cfg = ctx.cfg.raw if isinstance(ctx, StepContext) else ctx.config
    if cfg["emi_source"]:
        return cfg["emi_source"]
    return str(clean.groupby("model")["correct"].mean().idxmax())


def _step_observers(ctx: StepContext) -> None:
    from xaibench.maps import expected_split_half_reliability, load_trials, simulate_trials, split_half_reliability, trial_i1

    exp = ctx.experiment
    clean, emis = exp.table("i1_clean"), exp.table("i1_emi")
    source = _emi_source(ctx, clean)
    n_images = int(clean["image"].max()) + 1
    i1_rows, rel_rows = [], []
    for label, obs in ctx.cfg["observers"].items():
        conditions: dict[tuple[str, float | None], pd.DataFrame] = {}
        expected: dict[tuple[str, float | None], float] = {}
        if "simulate" in obs:
            trials = int(obs.get("trials", 20))
            truth = {("clean", None): clean[clean["model"] == obs["simulate"]].sort_values("image")["i1"].to_numpy()}
            mine = emis[(emis["source"] == source) & (emis["model"] == obs["simulate"])]
            for (method, p), part in mine.groupby(["method", "percentile"]):
                truth[(method, float(p))] = part.sort_values("image")["i1"].to_numpy()
            for k, (cond, values) in enumerate(sorted(truth.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1))):
                conditions[cond] = simulate_trials(values, trials, seed=ctx.seed("simulate", label, k))
                expected[cond] = expected_split_half_reliability(values, trials)
        else:
            base = Path(obs.get("root", "."))
            conditions[("clean", None)] = load_trials(base / obs["clean"])
            for key, file in obs.get("emi", {}).items():
                method, _, p = key.partition("/")
                conditions[(method, float(p))] = load_trials(base / file)
        for (method, p), trials_df in conditions.items():
            seed = ctx.seed("observer", label, method, p)
            values = trial_i1(trials_df, seed=seed, n_images=n_images)
            i1_rows.append(pd.DataFrame({"observer": label, "method": method, "percentile": p,
                                         "image": np.arange(n_images), "i1": values}))
            rel_rows.append({"observer": label, "method": method, "percentile": p, "source": source,
                             "simulated": "simulate" in obs,
                             "trials_per_image": int(trials_df.groupby("image").size().min()),
                             "reliability": split_half_reliability(trials_df, seed=seed, n_images=n_images),
                             "expected_reliability": expected.get((method, p), float("nan"))})
    if not i1_rows:
        ctx.log("no observers configured: only the best-method proxy is computed")
        i1_rows = [pd.DataFrame(columns=["observer", "method", "percentile", "image", "i1"])]
    ctx.write_table("observer_i1", pd.concat(i1_rows, ignore_index=True))
    ctx.write_table("reliability", pd.DataFrame(rel_rows, columns=[
        "observer", "method", "percentile", "source", "simulated", "trials_per_image", "reliability",
        "expected_reliability"]))


def _step_analysis(ctx: StepContext) -> None:
    from xaibench.maps import best_method, consistency, half_splits, inverse_l2, method_proxy, rank_models, reference_models
    from xaibench.maps.consistency import UNRELIABLE

    exp = ctx.experiment
    clean, emis = exp.table("i1_clean"), exp.table("i1_emi")
    observed, reliability = exp.table("observer_i1"), exp.table("reliability")
    models = list(_models(ctx))
    methods = list(ctx.cfg["methods"])
    source = _emi_source(ctx, clean)
    n_boot = ctx.cfg["n_boot"]
    clean_i1 = {m: clean[clean["model"] == m].sort_values("image")["i1"].to_numpy() for m in models}

    ranking, emi_rows = [], []
    for obs, rel in reliability.groupby("observer"):
        rel_clean = rel[rel["method"] == "clean"]["reliability"].iloc[0]
        obs_clean = observed[(observed["observer"] == obs) & (observed["method"] == "clean")].sort_values("image")["i1"]
        table = rank_models(clean_i1, obs_clean.to_numpy(), rel_clean, n_boot=n_boot, seed=ctx.seed("rank", obs))
        table.insert(0, "observer", obs)
        table["best"] = (table.index == 0) & table["consistency"].notna()
        ranking.append(table)
        for row in rel[rel["method"] != "clean"].itertuples():
            human = observed[(observed["observer"] == obs) & (observed["method"] == row.method)
                             & (observed["percentile"] == row.percentile)].sort_values("image")["i1"].to_numpy()
            for model in models:
                mine = emis[(emis["source"] == source) & (emis["method"] == row.method)
                            & (emis["percentile"] == row.percentile) & (emis["model"] == model)]
                est = consistency(mine.sort_values("image")["i1"].to_numpy(), human, row.reliability,
                                  n_boot=n_boot, seed=ctx.seed("emi", obs, row.method, row.percentile, model))
                emi_rows.append({"observer": obs, "source": source, "method": row.method,
                                 "percentile": row.percentile, "model": model, "consistency": est.value,
                                 "low": est.low, "high": est.high,
                                 "nan_reason": None if np.isfinite(est.value) else UNRELIABLE})
    ctx.write_table("model_consistency", pd.concat(ranking, ignore_index=True) if ranking else pd.DataFrame(
        columns=["observer", "model", "mean_i1", "consistency", "low", "high", "nan_reason", "best"]))
    ctx.write_table("emi_consistency", pd.DataFrame(emi_rows, columns=[
        "observer", "source", "method", "percentile", "model", "consistency", "low", "high", "nan_reason"]))

    n_images = len(next(iter(clean_i1.values())))
    splits = half_splits(n_images, ctx.cfg["splits"], seed=ctx.seed("splits"))
    refs = reference_models(clean_i1, splits)
    p = float(ctx.cfg["proxy_percentile"])
    at_p = emis[emis["percentile"] == p]
    emi_i1 = {(s, m, t): part.sort_values("image")["i1"].to_numpy()
              for (s, m, t), part in at_p.groupby(["source", "method", "model"])}
    proxy = method_proxy(emi_i1, refs, methods, splits)
    ctx.write_table("proxy", proxy)
    ctx.write_table("best_method", best_method(proxy))
    truth = []
    for target, ref in refs.items():
        for method in methods:
            a = torch.load(_maps_path(ctx.root, target, method), weights_only=True).float()
            b = torch.load(_maps_path(ctx.root, ref, method), weights_only=True).float()
            truth.append({"target": target, "reference": ref, "method": method,
                          "agreement": float(inverse_l2(a, b).mean())})
    ctx.write_table("ground_truth", pd.DataFrame(truth))


def _plan(cfg: ExperimentConfig) -> list[Step]:
    return [
        Step("models", _step_models),
        Step("clean", _step_clean, needs=("models",)),
        Step("maps", _step_maps, needs=("models",)),
        Step("emis", _step_emis, needs=("maps",)),
        Step("observers", _step_observers, needs=("clean", "emis")),
        Step("analysis", _step_analysis, needs=("observers",)),
    ]


# --- report -------------------------------------------------------------------------------------


def best_method_claim(proxy: pd.DataFrame, ground_truth: pd.DataFrame | None, level: float = 0.95) -> dict[str, Any]:
    """Whether the best-method proxy's winner may be called best, and why not where it may not.

    The proxy's best method (highest median proxy) and its runner-up, each with the central ``level``
    range of its proxy over half-splits and target models; their paired difference per (split, target)
    with the same range: the winner is *separated* when that range excludes 0. The ground-truth check
    (`xaibench.reliability.correlation_verdict` between the median proxy and the mean map agreement
    across methods, Spearman, with its interval, n and "too few methods to conclude" below 5) and the
    ground truth's own best method: the claim is *contradicted* when the ground truth's best is another
    method or the correlation is negative. ``highlight`` only when separated and not contradicted;
    ``text`` says which.
    """
    from xaibench.maps import best_method
    from xaibench.reliability import correlation_verdict

    tail = 100 * (1 - level) / 2
    ranked = best_method(proxy)
    top = ranked["method"].iloc[0]
    spread = proxy.groupby("method")["proxy"].quantile([tail / 100, 1 - tail / 100]).unstack()
    out: dict[str, Any] = {"best": top, "median": float(ranked["median_proxy"].iloc[0]),
                           "low": float(spread.at[top, tail / 100]), "high": float(spread.at[top, 1 - tail / 100]),
                           "runner_up": None, "separated": False, "contradicted": False, "check": None}
    parts = [f"{top}: median proxy {out['median']:.3f} ({level:.0%} range over half-splits and targets "
             f"[{out['low']:.3f}, {out['high']:.3f}])"]
    if len(ranked) > 1:
        second = ranked["method"].iloc[1]
        wide = proxy.pivot_table(index=["target", "split"], columns="method", values="proxy")
        diff = (wide[top] - wide[second]).dropna().to_numpy()
        lo, hi = np.percentile(diff, [tail, 100 - tail]) if diff.size else (np.nan, np.nan)
        out.update(runner_up=second, separated=bool(lo > 0))
        parts.append(f"runner-up {second} {float(ranked['median_proxy'].iloc[1]):.3f} "
                     f"[{spread.at[second, tail / 100]:.3f}, {spread.at[second, 1 - tail / 100]:.3f}]; paired "
                     f"difference [{lo:.3f}, {hi:.3f}]" + ("" if lo > 0 else ", which includes 0: not separated"))
    if ground_truth is not None and len(ground_truth):
        truth = ground_truth.groupby("method")["agreement"].mean()
        merged = ranked.set_index("method").join(truth, how="inner")
        check = correlation_verdict(merged["median_proxy"].to_numpy(), merged["agreement"].to_numpy(),
                                    unit="methods", level=level)
        truth_best = str(truth.idxmax())
        contradicted = truth_best != top or (np.isfinite(check.estimate) and check.estimate < 0)
        out.update(check=check, contradicted=bool(contradicted), truth_best=truth_best)
        parts.append(f"ground-truth check: {check}; the ground truth's best method is {truth_best}"
                     + (" — it contradicts the proxy" if contradicted else ""))
    out["highlight"] = out["separated"] and not out["contradicted"]
    verdict = ("best method" if out["highlight"] else
               "no best method: the ground-truth check contradicts the proxy" if out["contradicted"] else
               "no best method: the proxy does not separate it from the runner-up")
    out["text"] = f"{verdict}. " + "; ".join(parts) + "."
    return out


def best_model_claims(ranking: pd.DataFrame) -> tuple[list[str], list[int]]:
    """Per observer, the best model with its interval and the runner-up's; a best model is claimed
    (its row position returned for highlighting) only when its interval lies above the runner-up's."""
    claims, rows = [], []
    for obs, part in ranking.groupby("observer", sort=False):
        part = part[part["consistency"].notna()]
        if part.empty:
            claims.append(f"{obs}: no model has a defined consistency.")
            continue
        top = part.iloc[0]
        text = f"{obs}: {top.model} {top.consistency:.3f} [{top.low:.3f}, {top.high:.3f}]"
        if len(part) < 2:
            rows.append(int(part.index[0]))
            claims.append(f"Best model for {text} (the only model with a defined consistency).")
            continue
        second = part.iloc[1]
        runner = f"runner-up {second.model} {second.consistency:.3f} [{second.low:.3f}, {second.high:.3f}]"
        if top.low > second.high:
            rows.append(int(part.index[0]))
            claims.append(f"Best model for {text}; {runner}: the intervals do not overlap.")
        else:
            claims.append(f"No best model for {obs}: {top.model} {top.consistency:.3f} [{top.low:.3f}, "
                          f"{top.high:.3f}] and {runner} overlap.")
    return claims, rows


def _ceiling_note(table: pd.DataFrame, what: str) -> Text | None:
    """A note on consistency values above 1 (the noise-ceiling correction), with their intervals."""
    over = table[table["consistency"] > 1]
    if over.empty:
        return None
    shown = "; ".join(f"{r.model} {r.consistency:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in over.head(6).itertuples())
    return Text(f"{what}: {len(over)} value(s) above 1 ({shown}{'; …' if len(over) > 6 else ''}). Consistency is the "
                "model-observer correlation divided by the square root of the observer's split-half reliability "
                "(the noise ceiling); when the reliability is estimated low, from few trials, the ratio can exceed "
                "1. Read the interval: a value above 1 means the model is as consistent as the observer's noise "
                "allows, not more.")


def _report(exp: ExperimentDir) -> list[Any]:
    blocks: list[Any] = []
    if not exp.committed("analysis"):
        return [Text("The analysis step has not finished yet.")]
    rel = exp.table("reliability")
    ranking = exp.table("model_consistency")
    if rel["simulated"].any():
        blocks.append(Text("SIMULATED OBSERVERS: the behaviour of observers marked simulated was drawn from a "
                           "model's I1 plus binomial trial noise; it is not human or monkey data."))
    if len(ranking):
        claims, shown_best = best_model_claims(ranking)
        blocks.append(Table(ranking[["observer", "model", "mean_i1", "consistency", "low", "high", "nan_reason"]],
                            "Model consistency with each observer on clean images (bootstrap mean Spearman "
                            "across images / sqrt(observer reliability), 95 % percentile interval); best first, "
                            "highlighted only when its interval lies above the runner-up's.",
                            {(i, "model"): "best" for i in shown_best}))
        blocks.append(Text(" ".join(claims)))
        blocks.append(Plot("consistency_intervals", ranking, "Model ranking with 95 % intervals."))
        note = _ceiling_note(ranking, "Model consistency")
        if note:
            blocks.append(note)
    blocks.append(Table(rel, "Observers: per condition, trials per image, split-half reliability "
                             "(Spearman-Brown) and, for simulated observers, its analytic value."))
    emi_table = exp.table("emi_consistency")
    if len(emi_table):
        for obs, part in emi_table.groupby("observer"):
            best = ranking[(ranking["observer"] == obs) & ranking["best"]]["model"]
            # the best model's curves; without one (undefined consistency) the first model's, never a mix
            shown = part[part["model"] == (best.iloc[0] if len(best) else part["model"].iloc[0])]
            blocks.append(Plot("emi_consistency", shown, f"Consistency with {obs} on EMIs of "
                               f"{shown['source'].iloc[0]}'s maps, per method and percentile (model: "
                               f"{shown['model'].iloc[0]}; dashed: 1, the noise ceiling)."))
            note = _ceiling_note(shown.sort_values("consistency", ascending=False), f"EMI consistency with {obs}")
            if note:
                blocks.append(note)
    best = exp.table("best_method")
    truth = exp.table("ground_truth") if exp.has_table("ground_truth") else None
    claim = best_method_claim(exp.table("proxy"), truth)
    blocks.append(Table(best, "Best-method proxy: median over half-splits and target models of the Spearman "
                              "correlation between target and reference I1 on EMIs of the reference's maps. The "
                              "first row is highlighted only when the claim holds (below).",
                        {(0, "method"): "best"} if claim["highlight"] else {}))
    blocks.append(Text(f"Best-method claim: {claim['text']} Ground truth: map agreement "
                       "1 / (||A_target - A_reference|| + 1e-8) with the reference model, mean per method."))
    blocks.append(_emi_gallery(exp, best["method"].iloc[0], best["method"].iloc[-1]))
    return blocks


def _emi_gallery(exp: ExperimentDir, best: str, worst: str) -> Plot:
    from xaibench.maps import emi

    cfg = ExperimentConfig("maps", exp.config)
    clean = exp.table("i1_clean")
    source = _emi_source(exp, clean)
    p = float(cfg["proxy_percentile"])
    _, images, labels = next(_batches(cfg, "cpu"))
    k = min(6, images.shape[0])
    fill = _fill(cfg)
    rows = {"image": images[:k]}
    for method in (best, worst):
        maps = torch.load(_maps_path(exp.root, source, method), weights_only=True)[:k].float()
        rows[f"{method} (p{p:g})"] = emi(images[:k], maps, p, fill=fill)
    return Plot("image_rows", rows,
                f"EMIs of {source}'s maps at percentile {p:g}: highest proxy ({best}) and lowest ({worst}).")


RECIPE = Recipe(
    name="maps",
    summary="MAPS: explanation-masked images, image-level behaviour (B.I1) and consistency with observers",
    schema=SCHEMA,
    plan=_plan,
    report=_report,
    example="experiment-maps.toml",
    validate=_validate,
)
