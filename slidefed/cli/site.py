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
    paths: Annotated[
        list[Path], typer.Argument(help="Slide files, or DICOM series folders.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Format, vendor, levels, mpp and tile size of each slide.

    A file that cannot be read gets one line on stderr naming it and the
    reason; the command then exits with code 2 after the other slides.
    """
    from slidefed.client.slides.core import open_slide

    failed = 0
    for path in paths:
        try:
            with open_slide(path) as slide:
                info = slide.info()
        except SlidefedError as exc:
            failed += 1
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            continue
        if as_json:
            print(info.model_dump_json())
            continue
        mpp = f"{info.mpp:.4f} um/px" if info.mpp else "unknown"
        tile = (
            f"{info.tile_size[0]} x {info.tile_size[1]}" if info.tile_size else "none"
        )
        print(f"{info.path}")
        print(
            f"  format {info.format}, vendor {info.vendor}, {info.level_count} "
            f"level{'s' if info.level_count != 1 else ''}, mpp {mpp}, tile {tile}"
        )
        for i, lv in enumerate(info.levels):
            lv_tile = (
                f", tile {lv.tile_width} x {lv.tile_height}"
                if lv.tile_width and lv.tile_height
                else ""
            )
            print(
                f"  level {i}: {lv.width} x {lv.height}, "
                f"downsample {lv.downsample:g}{lv_tile}"
            )
    if failed:
        raise typer.Exit(2)


# --------------------------------------------------------------------------- site
@site_app.command("init")
def site_init(
    folder: Annotated[Path, typer.Argument(help="Site folder to create.")],
    name: Annotated[str, typer.Option(help="Site name.")] = "site",
) -> None:
    """Create site.toml with safe defaults, the site's audit key and node key."""
    from slidefed.client.config import SiteConfig, SiteSection, dump_site_config
    from slidefed.client.keys import ensure_audit_key
    from slidefed.deploy.site_node import ensure_node_key

    target = folder / "site.toml"
    if target.exists():
        raise ConfigError(f"{target} exists; edit it, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = SiteConfig(site=SiteSection(name=name), base_dir=folder.resolve())
    target.write_text(dump_site_config(config))
    ensure_audit_key(config)
    node_pub = ensure_node_key(config)
    print(
        f"wrote {target} and the site's keys; send {node_pub} to the coordinator; "
        "put manifest.csv next to site.toml, then run "
        f"'slidefed site prepare --config {target}'"
    )


def _manifest_slides(path: Path) -> dict[int, str]:
    """Slide named on each line of the manifest (for messages about its rows)."""
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError:
        return {}
    reader = csv.DictReader(text.splitlines())
    return {
        line: (rec.get("slide") or "").strip() for line, rec in enumerate(reader, 2)
    }


@site_app.command("prepare")
def site_prepare(
    config: ConfigOpt,
    workers: Annotated[int, typer.Option(help="Worker processes (0: auto).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Tissue, tiles and features of every slide in the manifest (cached).

    Shows progress (slides, tiles/s) and resumes after an interruption: slides
    already cached are not decoded again. Each skipped slide and each rejected
    manifest row gets one line with the reason; the report goes to
    state/prepare-report.json. Exits 2 only when no slide is usable or the
    manifest is invalid.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from slidefed.client.config import load_site_config
    from slidefed.client.data.manifest import load_manifest
    from slidefed.client.prepare.pipeline import SlideOutcome, prepare_site

    cfg = load_site_config(config)
    total = len(load_manifest(cfg.manifest_path).rows)
    started = time.perf_counter()
    fresh_tiles = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slides, {task.fields[rate]} tiles/s"),
    )
    with Progress(*columns, disable=as_json, transient=False) as progress:
        task = progress.add_task("Preparing", total=total, rate="-")

        def advance(outcome: SlideOutcome) -> None:
            nonlocal fresh_tiles
            if outcome.status == "ok":
                fresh_tiles += outcome.tiles
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{fresh_tiles / elapsed:.0f}")

        report = prepare_site(cfg, workers=workers or None, progress=advance)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        by_line = _manifest_slides(cfg.manifest_path)
        for s in report.slides:
            if s.status == "skipped":
                print(f"skipped {s.slide}: {' '.join(s.reason.split())}")
            elif s.unreadable_tiles:
                print(f"note {s.slide}: {s.reason}")
        for line, reason in report.rejected_rows:
            name = by_line.get(line) or "?"
            print(f"manifest line {line} ({name}) rejected: {reason}")
        ok = sum(s.status == "ok" for s in report.slides)
        cached = sum(s.status == "cached" for s in report.slides)
        tiles = sum(s.tiles for s in report.usable)
        print(
            f"{len(report.usable)} of {len(report.slides)} slides ready ({ok} prepared, "
            f"{cached} cached, {len(report.skipped)} skipped), {tiles} tiles, "
            f"{report.seconds:.1f} s, {report.tiles_per_second:.0f} tiles/s; "
            f"report in {cfg.state_dir / 'prepare-report.json'}"
        )
    if not report.usable:
        raise ConfigError(
            "no usable slide at this site; fix the slides listed above and run again"
        )


@site_app.command("budget")
def site_budget(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Privacy spent and remaining, per run and in total."""
    from slidefed.client.config import load_site_config
    from slidefed.client.privacy.ledger import PrivacyLedger, epsilon

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
