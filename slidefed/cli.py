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
slide_app = typer.Typer(
    help="Look at slide files.", no_args_is_help=True, rich_markup_mode=None
)
site_app = typer.Typer(
    help="Run a hospital site.", no_args_is_help=True, rich_markup_mode=None
)
audit_app = typer.Typer(
    help="Verify and read audit logs.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(synth_app, name="synth")
app.add_typer(slide_app, name="slide")
app.add_typer(site_app, name="site")
app.add_typer(audit_app, name="audit")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of site.toml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("slidefed").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Logs and CI capture output at 80 columns; the summary table needs more.
    return console if console.is_terminal else Console(width=120)


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    sites: Annotated[int, typer.Option(help="Number of hospitals.")] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    out: Annotated[
        Path | None, typer.Option(help="Folder for everything the demo makes.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of slides and training.")] = 0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show engine logs.")
    ] = False,
) -> None:
    """Synthesise hospitals, prepare their slides and train a federated DP model."""
    from slidefed import demo as d

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
    from slidefed.simulation import run_simulation

    run_simulation(run, n_sites=sites, total_cpus=d.cpu_count(), verbose=verbose)
    _demo_table(console, d, folder, plan)
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

    from slidefed.client.data import load_manifest
    from slidefed.client.prepare import prepare_site
    from slidefed.common.config import load_site_config

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
    from slidefed.common.synth import synth_site

    result = synth_site(
        out_dir, patients=patients, seed=seed, tumour_fraction=tumour_fraction
    )
    print(
        f"{result.n_slides} slides of {result.n_patients} patients "
        f"({result.n_tumour} tumour) in {result.root}; manifest {result.manifest}"
    )


# -------------------------------------------------------------------------- slide
@slide_app.command("inspect")
def slide_inspect(
    paths: Annotated[list[Path], typer.Argument(help="Slide files.")],
    as_json: JsonOpt = False,
) -> None:
    """Format, vendor, levels, mpp and tile size of each slide."""
    from slidefed.client.slides import open_slide

    failed = 0
    for path in paths:
        try:
            with open_slide(path) as slide:
                info = slide.info()
        except SlidefedError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        if as_json:
            print(info.model_dump_json())
        else:
            mpp = f"{info.mpp:.4f}" if info.mpp else "unknown"
            print(
                f"{info.path}: {info.format}, vendor {info.vendor}, mpp {mpp}, "
                f"tile {info.tile_size or 'none'}"
            )
            for i, lv in enumerate(info.levels):
                print(
                    f"  level {i}: {lv.width} x {lv.height}, downsample {lv.downsample}"
                )
    if failed:
        raise typer.Exit(2)


# --------------------------------------------------------------------------- site
@site_app.command("init")
def site_init(
    folder: Annotated[Path, typer.Argument(help="Site folder to create.")],
    name: Annotated[str, typer.Option(help="Site name.")] = "site",
) -> None:
    """Create site.toml with safe defaults and the site's audit key."""
    from slidefed.client.site import ensure_audit_key
    from slidefed.common.config import SiteConfig, SiteSection, dump_site_config

    target = folder / "site.toml"
    if target.exists():
        raise ConfigError(f"{target} exists; edit it, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = SiteConfig(site=SiteSection(name=name), base_dir=folder.resolve())
    target.write_text(dump_site_config(config))
    ensure_audit_key(config)
    print(
        f"wrote {target}; put manifest.csv next to it, then run "
        f"'slidefed site prepare --config {target}'"
    )


@site_app.command("prepare")
def site_prepare(
    config: ConfigOpt,
    workers: Annotated[int, typer.Option(help="Worker processes (0: auto).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Tissue, tiles and features of every slide in the manifest (cached)."""
    from rich.progress import Progress

    from slidefed.client.data import load_manifest
    from slidefed.client.prepare import prepare_site
    from slidefed.common.config import load_site_config

    cfg = load_site_config(config)
    total = len(load_manifest(cfg.manifest_path).rows)
    with Progress(disable=as_json) as progress:
        task = progress.add_task("Preparing slides", total=total)
        report = prepare_site(
            cfg, workers=workers or None, progress=lambda _o: progress.advance(task)
        )
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        for s in report.slides:
            if s.status == "skipped":
                print(f"skipped {s.slide}: {s.reason}")
        for line, reason in report.rejected_rows:
            print(f"manifest line {line} rejected: {reason}")
        tiles = sum(s.tiles for s in report.usable)
        print(
            f"{len(report.usable)} of {len(report.slides)} slides ready, {tiles} tiles, "
            f"{report.seconds:.1f} s; report in {cfg.state_dir / 'prepare-report.json'}"
        )
    if not report.usable:
        raise ConfigError("no usable slide at this site; fix the slides listed above")


@site_app.command("budget")
def site_budget(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Privacy spent and remaining, per run and in total."""
    from slidefed.client.privacy import PrivacyLedger, epsilon
    from slidefed.common.config import load_site_config

    cfg = load_site_config(config)
    ledger = PrivacyLedger(cfg.ledger_path).load()
    delta = ledger.delta or cfg.policy.delta_for(1)
    spent = epsilon(ledger.history(), delta, accountant=ledger.accountant)
    runs = []
    for plan in ledger.runs:
        rounds = [r for r in ledger.rounds if r.run_id == plan.run_id]
        runs.append(
            {
                "run_id": plan.run_id,
                "rounds": len(rounds),
                "noise_multiplier": plan.noise_multiplier,
                "epsilon_before": plan.epsilon_before,
                "epsilon_after": rounds[-1].epsilon_after
                if rounds
                else plan.epsilon_before,
            }
        )
    result = {
        "site": cfg.site.name,
        "unit": ledger.unit,
        "delta": delta,
        "epsilon_spent": spent,
        "epsilon_max": cfg.policy.max_epsilon,
        "epsilon_remaining": max(cfg.policy.max_epsilon - spent, 0.0),
        "runs": runs,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{cfg.site.name}: epsilon {spent:.3f} of {cfg.policy.max_epsilon:.3f} spent "
        f"(delta {delta:.2e}, unit {ledger.unit}); {result['epsilon_remaining']:.3f} left"
    )
    for r in runs:
        print(
            f"  run {r['run_id']}: {r['rounds']} rounds, sigma {r['noise_multiplier']:.3f}, "
            f"epsilon {r['epsilon_before']:.3f} -> {r['epsilon_after']:.3f}"
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
    target_epsilon: Annotated[
        float, typer.Option(help="Epsilon this run may spend per site.")
    ] = 8.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a federation of local site folders on Flower's simulation engine."""
    from slidefed.common.config import RunConfig
    from slidefed.simulation import run_simulation

    paths = [p / "site.toml" if p.is_dir() else p for p in sites]
    for p in paths:
        if not p.is_file():
            raise ConfigError(
                f"--sites {p}: no site.toml there; run 'slidefed site init'"
            )
    _setup_logging(verbose)
    out.mkdir(parents=True, exist_ok=True)
    run = RunConfig(
        num_server_rounds=rounds,
        seed=seed,
        target_epsilon=target_epsilon,
        min_sites=len(paths),
        run_dir=str(out.resolve()),
        sim_sites=",".join(str(p.resolve()) for p in paths),
    )
    run_simulation(run, n_sites=len(paths), verbose=verbose)
    print(f"run finished: {out / 'metrics.jsonl'}, {out / 'final.safetensors'}")


# -------------------------------------------------------------------------- audit
@audit_app.command("verify")
def audit_verify(
    logs: Annotated[list[Path], typer.Argument(help="Audit logs (audit.jsonl).")],
    keys: Annotated[
        Path | None,
        typer.Option(
            help="Folder of trusted *.pub audit keys (default: the key beside each log)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check hash chains and signatures; exit 1 naming the first bad record."""
    from slidefed.common.audit import verify_log
    from slidefed.common.crypto import key_id, load_public_key

    trusted = None
    if keys is not None:
        if not keys.is_dir():
            raise ConfigError(f"--keys {keys} is not a folder of *.pub files")
        trusted = {
            key_id(k): k for k in map(load_public_key, sorted(keys.glob("*.pub")))
        }
    for path in logs:
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such audit log; pass the path of audit.jsonl"
            )
    results = [verify_log(p, public_keys=trusted) for p in logs]
    if as_json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                print(f"{r.path}: OK, {r.records} records")
            for pr in r.problems[:1]:
                print(f"{r.path}:{pr.line}: {pr.kind}: {pr.message}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
