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


@bench_app.command("features")
def bench_features(
    as_json: JsonOpt = False,
    encoder: Annotated[
        str,
        typer.Option(help="timm:<arch> (random weights unless --weights), hf:<name>."),
    ] = "timm:vit_small_patch16_224",
    weights: Annotated[
        Path | None, typer.Option(help="Local weights file (timm) or folder (hf).")
    ] = None,
    slide: Annotated[
        Path | None, typer.Option(help="Slide to read (default: a synthetic one).")
    ] = None,
    size: Annotated[int, typer.Option(help="Side (px) of the synthetic slide.")] = 2048,
    workers: Annotated[int, typer.Option(help="Decode worker processes.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 64,
    reps: Annotated[int, typer.Option(help="Interleaved repetitions.")] = 3,
    device: Annotated[
        str | None, typer.Option(help="cuda, cpu (default: CUDA when available).")
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="Run the model through torch.compile.")
    ] = False,
) -> None:
    """Whole slide -> features tiles/s over the encoder alone on decoded tiles."""
    from slidefed.bench.features import bench_features as run_bench

    result = run_bench(
        encoder=encoder,
        weights=weights,
        slide=slide,
        size=size,
        workers=workers,
        batch_size=batch_size,
        reps=reps,
        device=device,
        compile=compile_model,
    )
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['encoder']} on {result['device']} ({result['dtype']}), batch "
        f"{result['batch']}, {result['workers']} decode workers, {result['tiles']} tiles"
    )
    print(
        f"decode {result['decode_tiles_per_s']} tiles/s, encoder "
        f"{result['encoder_tiles_per_s']} tiles/s, whole slide "
        f"{result['whole_tiles_per_s']} tiles/s"
    )
    print(f"ratio_to_encoder {result['ratio_to_encoder']}")


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
        "default grid JPEG 224 on 256": result["default_grid_jpeg"],
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


@bench_app.command("dicomweb")
def bench_dicomweb(
    as_json: JsonOpt = False,
    reps: Annotated[int, typer.Option(help="Interleaved repetitions.")] = 5,
    slides: Annotated[
        list[Path] | None,
        typer.Option(help="DICOM series (file or folder); default: the shared ones."),
    ] = None,
    batch_frames: Annotated[int, typer.Option(help="Frames per request.")] = 32,
) -> None:
    """Tiles/s from a local Orthanc over DICOMweb against the same local files."""
    from slidefed.bench.dicomweb import bench_dicomweb as run_bench

    result = run_bench(slides, reps=reps, batch_frames=batch_frames)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['tiles_per_pass']} tiles of {result['tile_size']} px from "
        f"{len(result['slides'])} slides: local {result['local_tiles_per_s']:.0f} "
        f"tiles/s, DICOMweb {result['dicomweb_tiles_per_s']:.0f} tiles/s; "
        f"ratio_dicomweb_to_local {result['ratio_dicomweb_to_local']} "
        f"({result['requests']} requests for {result['frames_fetched']} frames; "
        f"open {result['open_seconds']['dicomweb']} s vs "
        f"{result['open_seconds']['local']} s)"
    )


@bench_app.command("qc")
def bench_qc(
    as_json: JsonOpt = False,
    reps: Annotated[int, typer.Option(min=1, help="Interleaved repetitions.")] = 3,
    side: Annotated[
        int, typer.Option(min=512, help="Width (px) of the two synthetic slides.")
    ] = 6144,
) -> None:
    """Slide preparation with QC over without it (goal: QC adds <= 20 %)."""
    from slidefed.bench.qc import bench_qc as run_bench

    result = run_bench(reps=reps, side=side)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{len(result['slides'])} slides ({', '.join(result['slides'])}), encoder "
        f"{result['encoder']}: plain {result['plain_cpu_seconds']} s CPU "
        f"({result['tiles_plain']} tiles), with QC {result['qc_cpu_seconds']} s CPU "
        f"({result['tiles_qc']} tiles); wall ratio {result['wall_ratio_qc_to_plain']}"
    )
    met = result["goal_qc_overhead_at_most_20pct"]
    print(
        f"ratio_qc_to_plain {result['ratio_qc_to_plain']}; goal QC adds <= 20%: "
        f"{'met' if met else 'NOT met'}"
    )


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
    from slidefed.bench.round import (
        bytes_ratio_demo,
        bytes_ratio_large,
        measure,
        site_costs,
    )

    costs = site_costs(patients=patients, tiles=tiles, dim=dim)
    results = [measure(n) for n in (sites or [10, 50]) if n > 0]
    out = {
        "site": costs,
        "results": results,
        # The demo's model as a site sends it (packed), over its raw fp32 bytes.
        "bytes_ratio": bytes_ratio_demo(),
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
    print(
        f"bytes_ratio {out['bytes_ratio']} (demo model), "
        f"{out['bytes_ratio_abmil_1024']} (ABMIL 1024 -> 256)"
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
    folds: Annotated[
        int | None,
        typer.Option(min=1, help="Cross-validation folds; 1: hold out a third once."),
    ] = None,
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
        folds=folds or (1 if quick else 3),
    )
    result["plot"] = str(draw(result, plot or work / "utility-macro-f1.png"))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(table(result))
    print(f"plot: {result['plot']}")


@bench_app.command("prepare")
def bench_prepare(
    as_json: JsonOpt = False,
    patients: Annotated[
        int, typer.Option(help="Patients of the synthetic site (1-3 slides each).")
    ] = 6,
    size: Annotated[int, typer.Option(help="Slide width (px); height is 2/3.")] = 1536,
) -> None:
    """Slides/s through Ray (1 and 2 worker nodes) against local preparation."""
    from slidefed.bench.prepare import bench_prepare as run_bench

    result = run_bench(patients=patients, width=size, height=size * 2 // 3)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    local, ray = result["local"], result["ray"]
    print(
        f"{result['slides']} slides, {result['tiles']} tiles, "
        f"{result['cpu_cores']} cores"
    )
    for name, row in [
        ("local, 1 process", local["1_process"]),
        ("local, 2 processes", local["2_processes"]),
        ("Ray, 1 worker node", ray["1_worker_node"]),
        ("Ray, 2 worker nodes", ray["2_worker_nodes"]),
    ]:
        print(
            f"{name}: {row['slides_per_s']} slides/s ({row['seconds']} s), "
            f"cache equal to local: {row['cache_equal_to_local']}"
        )
    print(
        f"Ray 2 nodes over 1: {result['speedup_ray_2_nodes_over_1']}x; "
        f"joining the cluster {ray['connect_seconds']} s per run; "
        f"per-slide overhead {result['ray_per_slide_overhead_seconds']} s"
    )
