"""``slidefed bench utility``: what federation and DP cost in accuracy, on real tissue.

One run, one split by unit (group or patient; tile without a groups file), one set
of features: centralised training without DP, FedAvg over the sites without DP,
and FedAvg with DP-SGD at each asked epsilon per site, all scored on the same
held-out units (tile accuracy, macro-F1, per-class F1). ``evaluate="val"`` scores
on the validation units inside train instead, and never reads the test units: the
way the hyperparameters in :data:`DEFAULT_PLANS` were chosen.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slidefed.bench._utility_data import (
    BenchData,
    assign_sites,
    find_data,
    load_bench_data,
    split_counts,
    split_units,
    subsample,
)
from slidefed.bench._utility_sites import (
    BenchSite,
    check_no_shared_unit,
    load_sites,
    write_site,
)
from slidefed.bench._utility_train import DPPlan, PlainPlan
from slidefed.common.errors import ConfigError

Evaluate = Literal["test", "val"]
TARGET_RATIO = 0.9


class UtilityPlans(BaseModel):
    """The training plans of one bench run (``--plan FILE``: this model as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    centralised: PlainPlan
    federated: PlainPlan
    dp: DPPlan
    # How the model sees the hed features: "log1p" (log(1 + x), fixed and
    # data-independent, which evens out their scales: 0.02 to 160) or "raw".
    inputs: Literal["raw", "log1p"] = "log1p"
    dirichlet_alpha: float = Field(default=1.0, gt=0.0)
    quick_units_per_label: int = Field(default=12, ge=2)


# Chosen on the validation groups of lc25000-lung (docs/benchmarks.md).
DEFAULT_PLANS = UtilityPlans(
    centralised=PlainPlan(epochs=40, batch_size=8, lr=0.003),
    federated=PlainPlan(rounds=20, epochs=4, batch_size=8, lr=0.03),
    dp=DPPlan(
        rounds=200,
        local_epochs=1,
        batches_per_epoch=1,
        max_grad_norm=0.5,
        lr={1.0: 0.5, 4.0: 0.1, 8.0: 0.1},
        default_lr=0.1,
        lr_schedule="cosine",
        calibration="best",
    ),
)
QUICK_PLANS = UtilityPlans(
    centralised=PlainPlan(epochs=10, batch_size=8, lr=0.01),
    federated=PlainPlan(rounds=3, epochs=2, batch_size=8, lr=0.01),
    dp=DPPlan(rounds=10, max_grad_norm=1.0, default_lr=0.3, lr_schedule="cosine"),
)


def _prepare(
    bench: BenchData,
    *,
    sites: int,
    evaluate: Evaluate,
    out: Path,
    plans: UtilityPlans,
    seed: int,
    workers: int,
    fold: int = 0,
    folds: int = 1,
) -> tuple[list[BenchSite], BenchSite, dict[str, Any]]:
    """Split, deal the training units to the sites, write and load the folders."""
    splits = split_units(bench, seed=seed, fold=fold, folds=folds)
    counts = split_counts(bench, splits)
    # Choosing on "val" trains on train only; the final run trains on train + val.
    held_split = "test" if evaluate == "test" else "val"
    train_units = {
        u: lab
        for u, lab in bench.unit_labels().items()
        if splits[u] == "train" or (evaluate == "test" and splits[u] == "val")
    }
    site_of = assign_sites(
        train_units, sites=sites, alpha=plans.dirichlet_alpha, seed=seed + 1 + fold
    )
    cache = out / "feature-cache"
    if folds > 1:
        out = out / f"fold-{fold + 1}"
    paths = []
    for i in range(sites):
        tiles = [t for t in bench.tiles if site_of.get(t.unit) == i]
        paths.append(
            write_site(
                out / "sites" / f"site-{i + 1}",
                name=f"site-{i + 1}",
                data=bench,
                tiles=tiles,
                split="train",
                cache=cache,
            )
        )
    held_tiles = [t for t in bench.tiles if splits[t.unit] == held_split]
    paths.append(
        write_site(
            out / "sites" / "held-out",
            name="held-out",
            data=bench,
            tiles=held_tiles,
            split="test",
            cache=cache,
        )
    )
    loaded = load_sites(paths, bench.labels, seed=seed, workers=workers)
    train_sites, held = loaded[:-1], loaded[-1]
    check_no_shared_unit(train_sites, held)
    split_info = {
        **counts,
        "evaluated_on": evaluate,
        "held_out_units": held.n_units,
        "fold": fold + 1,
        "folds": folds,
    }
    return train_sites, held, split_info


def _site_info(site: BenchSite, labels: list[str]) -> dict[str, Any]:
    per_label: Counter[str] = Counter()
    for sample in site.samples:
        per_label[labels[int(sample.labels[0])]] += 1
    return {
        "site": site.name,
        "units": site.n_units,
        "tiles": site.n_tiles,
        "units_per_label": {lab: per_label.get(lab, 0) for lab in labels},
    }


def _settings(
    train_sites: list[BenchSite],
    held: BenchSite,
    *,
    labels: list[str],
    epsilons: list[float],
    plans: UtilityPlans,
    seeds: list[int],
) -> list[dict[str, Any]]:
    """Train and score every setting once per seed; one row each (seed means)."""
    from slidefed.bench._utility_train import (
        score,
        train_centralised,
        train_federated,
        train_federated_dp,
    )

    k = len(labels)
    rows: list[dict[str, Any]] = []
    for name, train in (
        ("centralised", train_centralised),
        ("federated", train_federated),
    ):
        plan = plans.centralised if name == "centralised" else plans.federated
        start, runs = time.perf_counter(), []
        for seed in seeds:
            model = train(
                train_sites, plan, n_classes=k, seed=seed, inputs=plans.inputs
            )
            runs.append({"seed": seed, **score(model, held.samples, labels)})
        rows.append(_row(name, None, runs, time.perf_counter() - start))
    for eps in epsilons:
        start, runs = time.perf_counter(), []
        for seed in seeds:
            model, privacy = train_federated_dp(
                train_sites,
                plans.dp,
                epsilon=eps,
                n_classes=k,
                seed=seed,
                inputs=plans.inputs,
            )
            runs.append({"seed": seed, **score(model, held.samples, labels)})
        row = _row("federated-dp", eps, runs, time.perf_counter() - start)
        row["sites"] = [p.as_dict() for p in privacy]
        row["max_site_epsilon"] = round(max(p.epsilon for p in privacy), 4)
        rows.append(row)
    return rows


def _row(
    name: str, epsilon: float | None, runs: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """A setting's figures: the means over its runs (seeds), and each run."""
    labels = list(runs[0]["class_f1"])
    f1s = [r["macro_f1"] for r in runs]
    return {
        "setting": name,
        "dp": epsilon is not None,
        "target_epsilon": epsilon,
        "accuracy": round(statistics.mean(r["accuracy"] for r in runs), 4),
        "macro_f1": round(statistics.mean(f1s), 4),
        "macro_f1_range": [min(f1s), max(f1s)],
        "class_f1": {
            lab: round(statistics.mean(r["class_f1"][lab] for r in runs), 4)
            for lab in labels
        },
        "test_tiles": runs[0]["test_tiles"],
        "runs": runs,
        "seconds": round(seconds, 2),
    }


def _pooled(per_fold: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per setting over all folds: every run (fold, seed) counts once."""
    rows = []
    for same in zip(*per_fold, strict=True):
        first = same[0]
        runs = [
            {"fold": f + 1, **run} for f, row in enumerate(same) for run in row["runs"]
        ]
        seconds = sum(r["seconds"] for r in same)
        row = _row(first["setting"], first["target_epsilon"], runs, seconds)
        row["test_tiles"] = sum(r["test_tiles"] for r in same)
        if first["dp"]:
            row["sites"] = first["sites"]
            row["sites_by_fold"] = [r["sites"] for r in same]
            row["max_site_epsilon"] = max(r["max_site_epsilon"] for r in same)
        rows.append(row)
    return rows


def _fold(
    bench: BenchData,
    *,
    epsilons: list[float],
    seeds: list[int],
    **prepare: Any,
) -> dict[str, Any]:
    """One split (a fold, or the single split): its sites, settings and verdict."""
    train_sites, held, split_info = _prepare(bench, **prepare)
    rows = _settings(
        train_sites,
        held,
        labels=bench.labels,
        epsilons=epsilons,
        plans=prepare["plans"],
        seeds=seeds,
    )
    return {
        "split": split_info,
        "sites": [_site_info(s, bench.labels) for s in train_sites],
        "settings": rows,
        "summary": summarise(rows),
    }


def run_utility(
    *,
    data: Path | None,
    groups: Path | None,
    out: Path,
    sites: int = 3,
    epsilons: tuple[float, ...] = (1.0, 4.0, 8.0),
    quick: bool = False,
    evaluate: Evaluate = "test",
    plans: UtilityPlans | None = None,
    seed: int = 0,
    repeats: int | None = None,
    workers: int = 2,
    folds: int = 1,
) -> dict[str, Any]:
    """The whole bench: every setting, side by side, on the same units; JSON-ready.

    Each setting is trained ``repeats`` times (seeds ``seed``, ``seed + 1``, ...;
    default 3, 1 with ``quick``) on each split. ``folds`` > 1 cross-validates
    (:func:`split_units`); the figures are the means over all folds and seeds.

    Raises
    ------
    ConfigError
        If the data folder is missing or unusable (naming the fix).
    ManifestError
        If the groups file is invalid.
    """
    import torch

    started = time.perf_counter()
    # One thread: on a small CPU, torch's threads only contend for the cores.
    torch.set_num_threads(1)
    root = find_data(data)
    bench = load_bench_data(root, groups)
    plans = plans or (QUICK_PLANS if quick else DEFAULT_PLANS)
    if quick:
        bench = subsample(bench, units_per_label=plans.quick_units_per_label, seed=seed)
    n_runs = repeats or (1 if quick else 3)
    per_fold = [
        _fold(
            bench,
            sites=sites,
            evaluate=evaluate,
            out=out,
            plans=plans,
            seed=seed,
            workers=workers,
            fold=fold,
            folds=folds,
            epsilons=list(epsilons),
            seeds=[seed + i for i in range(n_runs)],
        )
        for fold in range(folds)
    ]
    rows = (
        per_fold[0]["settings"]
        if folds == 1
        else _pooled([f["settings"] for f in per_fold])
    )
    return {
        "data": str(root),
        "groups_file": str(bench.groups_file) if bench.groups_file else None,
        "unit": bench.unit,
        "labels": bench.labels,
        "features": "hed (24 dims)",
        "model": "tile classifier (LayerNorm, 24 -> 64 -> classes) on "
        + ("log(1 + features)" if plans.inputs == "log1p" else "the features"),
        "quick": quick,
        "seed": seed,
        "repeats": n_runs,
        "folds": folds,
        "split": per_fold[0]["split"],
        "sites": per_fold[0]["sites"],
        "by_fold": [] if folds == 1 else per_fold,
        "plans": plans.model_dump(mode="json"),
        "settings": rows,
        "summary": summarise(rows),
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse_epsilons(text: str) -> tuple[float, ...]:
    """``1,4,8`` as epsilons.

    Raises
    ------
    ConfigError
        If an entry is not a positive number.
    """
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ConfigError(
                f"--epsilons {text!r}: {part!r} is not a positive number; write "
                "them like 1,4,8"
            )
        out.append(value)
    return tuple(out)


def load_plans(path: Path) -> UtilityPlans:
    """Training plans from a JSON file (the ``plans`` of a result, or a part of it).

    Raises
    ------
    ConfigError
        If the file is missing or does not hold valid plans.
    """
    import json

    from pydantic import ValidationError

    try:
        given = json.loads(path.read_text(encoding="utf-8"))
        return UtilityPlans.model_validate(
            {**DEFAULT_PLANS.model_dump(mode="json"), **given}
        )
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"--plan {path}: {first}; give a JSON object with the keys "
            "centralised, federated and dp (see the plans of a --json result)"
        ) from exc


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Macro-F1 of each DP setting over the centralised one, and the 0.9x target."""
    central = next(r["macro_f1"] for r in rows if r["setting"] == "centralised")
    ratios = {
        str(r["target_epsilon"]): round(r["macro_f1"] / central, 4) if central else 0.0
        for r in rows
        if r["dp"]
    }
    met = [
        r["target_epsilon"]
        for r in rows
        if r["dp"]
        and r["target_epsilon"] <= 8.0
        and central
        and r["macro_f1"] >= TARGET_RATIO * central
    ]
    return {
        "centralised_macro_f1": central,
        "dp_macro_f1_ratio_to_centralised": ratios,
        "target": f"federated DP at epsilon <= 8 reaches >= {TARGET_RATIO} x "
        "centralised macro-F1",
        "target_met": bool(met),
        "target_met_at_epsilons": met,
    }


__all__ = [
    "DEFAULT_PLANS",
    "QUICK_PLANS",
    "UtilityPlans",
    "load_plans",
    "parse_epsilons",
    "run_utility",
    "summarise",
]
