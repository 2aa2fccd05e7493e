"""``slidefed slide ...`` and ``slidefed site ...``: commands for hospital IT."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from slidefed.common.errors import ConfigError, SlidefedError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of site.toml.")]

slide_app = typer.Typer(
    help="Look at slide files.", no_args_is_help=True, rich_markup_mode=None
)
site_app = typer.Typer(
    help="Run a hospital site.", no_args_is_help=True, rich_markup_mode=None
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
