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
