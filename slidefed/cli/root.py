"""The ``slidefed`` command. Heavy libraries (torch, opacus, flwr) load inside commands."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from slidefed.cli.audit import audit_app
from slidefed.cli.bench import bench_app
from slidefed.cli.server import server_app
from slidefed.cli.site import slide_app
from slidefed.cli.site_node import site_app
from slidefed.common.errors import ConfigError, SlidefedError

logger = logging.getLogger("slidefed")

app = typer.Typer(
    name="slidefed",
    help="Federated learning for computational pathology with patient-level DP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
synth_app = typer.Typer(
    help="Synthetic data.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(synth_app, name="synth")
app.add_typer(slide_app, name="slide")
app.add_typer(site_app, name="site")
app.add_typer(server_app, name="server")
app.add_typer(audit_app, name="audit")
app.add_typer(bench_app, name="bench")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of site.toml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    # The same console as progress bars and the live table, so that log lines
    # print above them instead of through them.
    handler = RichHandler(
        console=_console(), show_path=False, show_time=False, markup=False
    )
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("slidefed").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


_CONSOLE: list[Any] = []


def _console() -> Any:
    if not _CONSOLE:
        from rich.console import Console

        console = Console()
        # Logs and CI capture output at 80 columns; the summary table needs more.
        _CONSOLE.append(console if console.is_terminal else Console(width=120))
    return _CONSOLE[0]


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    sites: Annotated[int, typer.Option(help="Number of hospitals.")] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    out: Annotated[
        Path | None, typer.Option(help="Folder for everything the demo makes.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of slides and training.")] = 0,
    data: Annotated[
        str,
        typer.Option(help="slides (synthetic WSIs) or tiles (real labelled tiles)."),
    ] = "slides",
    tiles_dir: Annotated[
        Path | None, typer.Option(help="Folder of labelled tile class folders.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show engine logs.")
    ] = False,
) -> None:
    """Synthesise hospitals (or split real tiles) and train a federated DP model."""
    from slidefed.demo import federation as d

    if data not in ("slides", "tiles"):
        raise ConfigError(f"--data {data!r} must be 'slides' or 'tiles'")
    if data == "tiles":
        _demo_tiles(out, rounds, seed, tiles_dir, verbose)
        return
    if sites < 1:
        raise ConfigError(f"--sites {sites} must be at least 1; try --sites 3")
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be at least 1; try --rounds 3")
    folder = d.check_out_dir(out)
    _setup_logging(verbose)
    console = _console()
    console.print(f"[bold]slidefed demo[/] in {folder}")
    plan = d.plan_sites(folder, sites, seed)
    started = time.perf_counter()
    _demo_synth(console, d, plan)
    _demo_prepare(console, plan)
    run = d.demo_run_config(folder, plan, rounds, seed)
    console.print(
        f"Federated training: {sites} sites, {rounds} rounds, DP-SGD per patient, "
        f"target epsilon {run.target_epsilon} per site"
    )
    from slidefed.progress import LiveRounds
    from slidefed.simulation import run_simulation

    with LiveRounds(folder / "run" / "metrics.jsonl", rounds, console):
        run_simulation(run, n_sites=sites, total_cpus=d.cpu_count(), verbose=verbose)
    _demo_table(console, d, folder, plan)
    console.print(
        f"Done in {time.perf_counter() - started:.0f} s. Everything is in {folder}"
    )


def _demo_tiles(
    out: Path | None, rounds: int, seed: int, tiles_dir: Path | None, verbose: bool
) -> None:
    from rich.table import Table

    from slidefed.demo import federation as d
    from slidefed.demo import tiles as t
    from slidefed.simulation import run_simulation

    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be at least 1; try --rounds 5")
    source = t.find_tiles_dir(tiles_dir)
    folder = d.check_out_dir(out)
    _setup_logging(verbose)
    console = _console()
    console.print(
        f"[bold]slidefed demo --data tiles[/] in {folder} (tiles from {source})"
    )
    sites = t.build_tile_sites(source, folder, seed=seed)
    run = t.tiles_run_config(folder, sites, rounds, seed)
    started = time.perf_counter()
    run_simulation(run, n_sites=len(sites), total_cpus=d.cpu_count(), verbose=verbose)
    rows = [
        json.loads(x)
        for x in (folder / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    federated = t.federated_summary(rows[-1], run.label_list())
    baseline = t.centralised_baseline(
        sites, run, epochs=run.local_epochs * run.num_server_rounds
    )
    from slidefed.client.config import load_site_config
    from slidefed.client.privacy.ledger import PrivacyLedger

    eps = {}
    for path in sites:
        cfg = load_site_config(path)
        ledger = PrivacyLedger(cfg.ledger_path).load()
        eps[cfg.site.name] = ledger.rounds[-1].epsilon_after if ledger.rounds else 0.0
    table = Table(title="Held-out tiles: federated with DP vs centralised without")
    table.add_column("class")
    table.add_column("federated (DP)", justify="right")
    table.add_column("centralised", justify="right")
    for label in run.label_list():
        fed = federated["class_accuracy"].get(label)
        table.add_row(
            label,
            "-" if fed is None else f"{fed:.3f}",
            f"{baseline['class_accuracy'][label]:.3f}"
            if baseline["class_support"][label]
            else "-",
        )
    table.add_row(
        "accuracy", f"{federated['accuracy']:.3f}", f"{baseline['accuracy']:.3f}"
    )
    table.add_row(
        "macro-F1", f"{federated['macro_f1']:.3f}", f"{baseline['macro_f1']:.3f}"
    )
    console.print(table)
    for name, value in eps.items():
        console.print(f"  epsilon spent by {name}: {value:.2f} (unit: tile)")
    result = {
        "federated": federated,
        "centralised": baseline,
        "epsilon": eps,
        "rounds": rounds,
        "labels": run.label_list(),
    }
    (folder / "run" / "tiles-results.json").write_text(json.dumps(result, indent=2))
    console.print(
        f"Done in {time.perf_counter() - started:.0f} s. Everything is in {folder}"
    )


def _demo_synth(console: Any, d: Any, plan: Any) -> None:
    from rich.progress import Progress

    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("Synthesising slides", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        d.synthesise(
            plan, workers=max(1, min(d.cpu_count(), len(plan))), on_progress=update
        )


def _demo_prepare(console: Any, plan: Any) -> None:
    from rich.progress import Progress

    from slidefed.client.config import load_site_config
    from slidefed.client.data.manifest import load_manifest
    from slidefed.client.prepare.pipeline import prepare_site

    for site in plan:
        config = load_site_config(site.config_path)
        total = len(load_manifest(config.manifest_path).rows)
        with Progress(console=console) as progress:
            task = progress.add_task(f"Preparing {site.name}", total=total)
            report = prepare_site(config, progress=_advance(progress, task))
        tiles = sum(s.tiles for s in report.usable)
        console.print(
            f"  {site.name}: {len(report.usable)} slides, {tiles} tiles, "
            f"{report.seconds:.1f} s"
        )


def _advance(progress: Any, task: Any) -> Any:
    def advance(_outcome: object) -> None:
        progress.advance(task)

    return advance


def _demo_table(console: Any, d: Any, folder: Path, plan: Any) -> None:
    from rich.table import Table

    metrics_path = folder / "run" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x]
    eps = d.site_epsilons(plan)
    table = Table(title="Held-out patients, per round")
    for col in ("round", "train loss", "held-out loss", "accuracy", "AUC"):
        table.add_column(col, justify="right")
    for site in plan:
        table.add_column(f"ε {site.name}", justify="right")
    for row in d.summary_rows(rows):
        cells = [str(row["round"])]
        for key in ("train_loss", "eval_loss", "accuracy", "auc"):
            value = row[key]
            cells.append("-" if value is None else f"{value:.3f}")
        for site in plan:
            value = eps[site.name].get(row["round"])
            cells.append("-" if value is None else f"{value:.2f}")
        table.add_row(*cells)
    console.print(table)


# -------------------------------------------------------------------------- synth
@synth_app.command("site")
def synth_site_cmd(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write slides and manifest.csv into.")
    ],
    patients: Annotated[int, typer.Option(help="Number of patients.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed; same seed, same files.")] = 0,
    tumour_fraction: Annotated[
        float, typer.Option(help="Share of tumour patients.")
    ] = 0.5,
) -> None:
    """Write a synthetic site: pyramidal TIFF slides and manifest.csv."""
    from slidefed.demo.synth import synth_site

    result = synth_site(
        out_dir, patients=patients, seed=seed, tumour_fraction=tumour_fraction
    )
    print(
        f"{result.n_slides} slides of {result.n_patients} patients "
        f"({result.n_tumour} tumour) in {result.root}; manifest {result.manifest}"
    )


# ----------------------------------------------------------------------- simulate
@app.command()
def simulate(
    sites: Annotated[
        list[Path], typer.Option("--sites", help="site.toml (or its folder); repeat.")
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
) -> None:
    """Run a federation of local site folders on Flower's simulation engine."""
    from slidefed.common.run_config import parse_run_config
    from slidefed.simulation import run_simulation

    paths = [p / "site.toml" if p.is_dir() else p for p in sites]
    for p in paths:
        if not p.is_file():
            raise ConfigError(
                f"--sites {p}: no site.toml there; run 'slidefed site init'"
            )
    out = out.resolve()
    if not resume and (out / "checkpoints").is_dir():
        raise ConfigError(
            f"--out {out} already holds a run; pass --resume to continue it or "
            "choose a new folder"
        )
    if resume and not (out / "checkpoints").is_dir():
        raise ConfigError(f"--resume: {out} holds no checkpoint to resume from")
    _setup_logging(verbose)
    out.mkdir(parents=True, exist_ok=True)
    run = parse_run_config(
        {
            "num-server-rounds": rounds,
            "seed": seed,
            "strategy": strategy,
            "target-epsilon": target_epsilon,
            "local-epochs": local_epochs,
            "lr": lr,
            "wire-dtype": wire_dtype,
            "resume": resume,
            "min-sites": len(paths),
            "run-dir": str(out),
            "run-name": f"sim:{out}",
            "sim-sites": ",".join(str(p.resolve()) for p in paths),
        }
    )
    from slidefed.progress import LiveRounds, rounds_table

    console = _console()
    with LiveRounds(out / "metrics.jsonl", rounds, console) as live:
        run_simulation(run, n_sites=len(paths), verbose=verbose)
    console.print(rounds_table(live.rows(), rounds))
    print(f"run finished: {out / 'metrics.jsonl'}, {out / 'final.safetensors'}")


@app.command()
def launch(
    connection: Annotated[
        str, typer.Argument(help="Flower connection (see 'flwr config ls').")
    ],
    app_dir: Annotated[
        Path | None,
        typer.Option(
            "--app", help="App folder (default: one made for the installed slidefed)."
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
    """Start a run on a real federation and exit non-zero unless it completes."""
    import tempfile

    from slidefed.launch import launch as do_launch
    from slidefed.simulation import write_app_dir

    _setup_logging(False)
    folder = app_dir or write_app_dir(Path(tempfile.mkdtemp(prefix="slidefed-app-")))
    run_id = do_launch(folder, connection, run_config=run_config, timeout=timeout)
    print(f"run {run_id} completed")


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line and exit 2 for bad input, never a traceback."""
    try:
        rc = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        return 0
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        return 2
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except SlidefedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # Without standalone mode, click returns the code of typer.Exit.
    return rc if isinstance(rc, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
