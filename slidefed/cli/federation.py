"""``slidefed simulate`` and ``slidefed launch``: run a federation, local or real."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidefed.cli._console import console, setup_logging


def simulate(
    sites: Annotated[
        list[Path],
        typer.Option(
            "--sites",
            help="site.toml (or its folder); repeat, or list them: --sites a b c.",
        ),
    ],
    rounds: Annotated[int, typer.Option(help="Federated rounds.")],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue after the last checkpoint.")
    ] = False,
    strategy: Annotated[
        str,
        typer.Option(
            help="fedavg, fedprox, fedadam, fedmedian, fedtrimmedavg or krum."
        ),
    ] = "fedavg",
    target_epsilon: Annotated[
        float, typer.Option(help="Epsilon this run may spend per site.")
    ] = 8.0,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 4,
    lr: Annotated[float, typer.Option(help="Local learning rate.")] = 0.03,
    wire_dtype: Annotated[
        str, typer.Option(help="float32 or float16 on the wire.")
    ] = "float32",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    more_sites: Annotated[
        list[Path] | None,
        typer.Argument(help="More sites (as in --sites a b c).", show_default=False),
    ] = None,
) -> None:
    """Run a federation of local site folders on Flower's simulation engine."""
    from slidefed import simulation as sim
    from slidefed.progress import LiveRounds, rounds_table

    paths = sim.simulation_sites([*sites, *(more_sites or [])])
    out = sim.check_run_folder(out, resume=resume)
    setup_logging(verbose)
    _prepare_sites(paths)
    run = sim.simulation_run_config(
        paths,
        out,
        rounds=rounds,
        seed=seed,
        resume=resume,
        strategy=strategy,
        target_epsilon=target_epsilon,
        local_epochs=local_epochs,
        lr=lr,
        wire_dtype=wire_dtype,
    )
    with LiveRounds(out / "metrics.jsonl", rounds, console()) as live:
        sim.run_simulation(run, n_sites=len(paths), verbose=verbose)
    console().print(rounds_table(live.rows(), rounds))
    print(f"run finished: {out / 'metrics.jsonl'}, {out / 'final.safetensors'}")


def _prepare_sites(paths: list[Path]) -> None:
    """Prepare each site not prepared yet: a round only reads prepared features."""
    from slidefed.client.config import load_site_config
    from slidefed.client.prepare.pipeline import prepare_unless_ready

    for path in paths:
        config = load_site_config(path)
        report = prepare_unless_ready(config)
        if report is not None:
            console().print(
                f"prepared site {config.site.name}: {len(report.usable)} of "
                f"{len(report.slides)} slides ready, {len(report.skipped)} skipped"
            )


def launch(
    connection: Annotated[
        str, typer.Argument(help="Flower connection (see 'flwr config ls').")
    ],
    app_dir: Annotated[
        Path | None,
        typer.Option(
            "--app",
            help="App folder from 'slidefed app build' (default: the same app, "
            "built in a temporary folder).",
        ),
    ] = None,
    run_config: Annotated[
        str,
        typer.Option(
            help="Overrides, e.g. \"num-server-rounds=5 run-dir='/runs/r1'\"."
        ),
    ] = "",
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the run.")
    ] = 86400.0,
) -> None:
    """Start a run on a real federation, print each round, exit non-zero unless it completes."""
    import tempfile

    from slidefed.deploy.approval import fab_hash_of_app_dir
    from slidefed.launch import launch as do_launch
    from slidefed.simulation import write_app_dir

    setup_logging(False)
    folder = app_dir or write_app_dir(Path(tempfile.mkdtemp(prefix="slidefed-app-")))
    print(
        f"submitting app {fab_hash_of_app_dir(folder)} (the FAB sha256 every site "
        "must have approved; 'slidefed app build' prints it)",
        flush=True,
    )
    run_id = do_launch(
        folder,
        connection,
        run_config=run_config,
        timeout=timeout,
        on_round=lambda line: print(line, flush=True),
    )
    print(f"run {run_id} completed")


def app_build(
    out: Annotated[
        Path,
        typer.Option("--out", help="App folder to write (empty or a previous build)."),
    ] = Path("slidefed-app"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build the app sites approve: its folder, its FAB and the FAB's sha256."""
    from slidefed.app_bundle import build_app, send_to_sites

    built = build_app(out)
    if as_json:
        print(built.model_dump_json(indent=2))
        return
    print("\n".join(send_to_sites(built)))


app_app = typer.Typer(
    help="The app that sites approve.", no_args_is_help=True, rich_markup_mode=None
)
app_app.command("build")(app_build)


__all__ = ["app_app", "app_build", "launch", "simulate"]
