"""``slidefed bench ...``: benchmarks, each a ratio against an in-run baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of site.toml.")]

bench_app = typer.Typer(
    help="Benchmarks (ratios against a baseline measured in the same run).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


# -------------------------------------------------------------------------- bench
@bench_app.command("dp")
def bench_dp(
    as_json: JsonOpt = False,
    reps: Annotated[int, typer.Option(help="Timed steps per variant.")] = 15,
    utility: Annotated[
        bool, typer.Option("--utility", help="Also sweep epsilon in {1, 4, 8, inf}.")
    ] = False,
    rounds: Annotated[int, typer.Option(help="Rounds of the utility sweep.")] = 3,
) -> None:
    """DP-SGD step time over a plain step (and, with --utility, AUC per epsilon)."""
    import math

    from slidefed.bench.dp import step_ratio, utility_sweep

    result: dict[str, Any] = {"step": step_ratio(reps=reps)}
    result["ratio_dp_to_plain"] = result["step"]["ratio_dp_to_plain"]
    if utility:
        sweep = utility_sweep([1.0, 4.0, 8.0, math.inf], rounds=rounds)
        result["utility"] = sweep
    if as_json:
        print(json.dumps(result, indent=2))
        return
    step = result["step"]
    print(
        f"{step['model']}, batch {step['batch']}, bags {step['bag_lengths']}, "
        f"{step['threads']} thread(s)"
    )
    print(
        f"plain {step['plain_step_ms']} ms, DP (ew) {step['dp_step_ms']} ms, "
        f"DP (hooks) {step['hooks_step_ms']} ms"
    )
    print(
        f"ratio_dp_to_plain {step['ratio_dp_to_plain']} "
        f"(hooks {step['ratio_hooks_to_plain']})"
    )
    if utility:
        for row in result["utility"]["results"]:
            print(
                f"epsilon {row['epsilon']}: AUC {row['auc']}, accuracy {row['accuracy']}"
            )


@bench_app.command("tiling")
def bench_tiling(
    as_json: JsonOpt = False,
    reps: Annotated[int, typer.Option(help="Interleaved repetitions.")] = 7,
    size: Annotated[
        int, typer.Option(help="Side (px) of the single-process slides.")
    ] = 4096,
    big: Annotated[
        int, typer.Option(help="Side (px) of the slide read by 1 and 2 processes.")
    ] = 8192,
) -> None:
    """Tile reading: ours against the imagecodecs decode floor and tiffslide."""
    from slidefed.bench.tiling import bench_tiling as run_bench

    result = run_bench(size=size, big=big, reps=reps)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    cases = {
        "aligned JPEG 256": result["aligned_jpeg"],
        "20x from 40x JPEG": result["20x_from_40x_jpeg"],
        "aligned JPEG 2000": result["aligned_jpeg2000"],
    }
    for name, case in cases.items():
        print(
            f"{name}: {case['tiles_per_s']:.0f} tiles/s, floor "
            f"{case['floor_tiles_per_s']:.0f}, naive {case['naive_tiles_per_s']:.0f}; "
            f"ratio_to_floor {case['ratio_to_floor']}, "
            f"ratio_to_naive {case['ratio_to_naive']}"
        )
    procs = result["processes"]
    print(
        f"2 processes over 1: {procs['speedup_2_processes']}x "
        f"({procs['one_process_tiles_per_s']:.0f} -> "
        f"{procs['two_processes_tiles_per_s']:.0f} tiles/s; core share of the "
        f"busiest worker {procs['core_share_one_process']} -> "
        f"{procs['core_share_two_processes']})"
    )
    for goal, met in result["goals"].items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")


@bench_app.command("round")
def bench_round(
    as_json: JsonOpt = False,
    sites: Annotated[
        list[int] | None,
        typer.Option(
            "--sites", help="Simulated federation sizes (default 10 and 50; 0: none)."
        ),
    ] = None,
    patients: Annotated[
        int, typer.Option(help="Patients of the realistic site.")
    ] = 200,
    tiles: Annotated[
        int, typer.Option(help="Tiles per bag at the realistic size.")
    ] = 1000,
    dim: Annotated[
        int, typer.Option(help="Feature length at the realistic size.")
    ] = 1024,
) -> None:
    """A site message's fixed cost, and whole rounds against local training."""
    from slidefed.bench.round import bytes_ratio_large, measure, site_costs

    costs = site_costs(patients=patients, tiles=tiles, dim=dim)
    results = [measure(n) for n in (sites or [10, 50]) if n > 0]
    out = {
        "site": costs,
        "results": results,
        "bytes_ratio": results[0]["bytes_ratio"] if results else None,
        "bytes_ratio_abmil_1024": bytes_ratio_large(),
    }
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for size in ("demo", "realistic"):
        c = costs[size]
        print(
            f"site message ({size}): fixed {c['fixed_ms_per_message']} ms, training "
            f"{c['training_seconds']} s, overhead_fraction {c['overhead_fraction']}"
        )
    for r in results:
        print(
            f"{r['sites']} sites: round {r['round_seconds']} s, local training "
            f"{r['local_training_seconds']} s, overhead_fraction {r['overhead_fraction']}, "
            f"bytes_ratio {r['bytes_ratio']}"
        )


@bench_app.command("robust")
def bench_robust(
    as_json: JsonOpt = False,
    rounds: Annotated[int, typer.Option(help="Rounds per federation.")] = 3,
) -> None:
    """Held-out AUC of each strategy when one of four sites sends hostile updates."""
    from slidefed.bench.robust import sweep

    results = sweep(rounds=rounds)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"{r['strategy']:>14} {r['attack']:>10}: AUC {r['auc']}, "
            f"rejected {r['rejected_updates']}"
        )


@bench_app.command("utility")
def bench_utility(
    as_json: JsonOpt = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of class folders (default: shared/data/patches/lc25000-lung)."
        ),
    ] = None,
    groups: Annotated[
        Path | None,
        typer.Option(
            help="CSV of each tile's group or patient_id (default: DATA/groups.csv "
            "if present; without one each tile is its own unit)."
        ),
    ] = None,
    sites: Annotated[int, typer.Option(min=1, help="Number of sites.")] = 3,
    epsilons: Annotated[
        str, typer.Option(help="Target epsilons per site, comma-separated.")
    ] = "1,4,8",
    out: Annotated[
        Path | None,
        typer.Option(help="Work folder: site folders and the feature cache."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG of macro-F1 per setting (default OUT).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Few units and rounds (tests).")] = False,
    evaluate: Annotated[
        str,
        typer.Option(help="Score on 'test' units, or on 'val' (inside train) to tune."),
    ] = "test",
    plan: Annotated[
        Path | None, typer.Option(help="JSON of training plans (see --json).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and training.")] = 0,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, help="Trainings per setting (seeds); default 3, quick 1."),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes that encode uncached tiles.")
    ] = 2,
) -> None:
    """Centralised, federated and federated-DP utility on real tiles, side by side."""
    import tempfile

    from slidefed.bench._utility_report import plot as draw
    from slidefed.bench._utility_report import table
    from slidefed.bench.utility import load_plans, parse_epsilons, run_utility
    from slidefed.common.errors import ConfigError

    if evaluate not in ("test", "val"):
        raise ConfigError(f"--evaluate {evaluate!r} must be 'test' or 'val'")
    work = out or Path(tempfile.gettempdir()) / "slidefed-bench-utility"
    result = run_utility(
        data=data,
        groups=groups,
        out=work,
        sites=sites,
        epsilons=parse_epsilons(epsilons),
        quick=quick,
        evaluate="test" if evaluate == "test" else "val",
        plans=load_plans(plan) if plan else None,
        seed=seed,
        repeats=repeats,
        workers=workers,
    )
    result["plot"] = str(draw(result, plot or work / "utility-macro-f1.png"))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(table(result))
    print(f"plot: {result['plot']}")
