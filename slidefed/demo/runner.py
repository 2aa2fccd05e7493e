"""Run the two demos end to end, with progress and results on a rich console.

:func:`run_slides_demo` synthesises hospitals, prepares their slides and trains a
federated DP model on Flower's simulation engine; :func:`run_tiles_demo` does the
same on real labelled tiles and adds a centralised baseline.  The ``slidefed demo``
command checks its options, makes the folder and the console, and calls these.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from slidefed.common.errors import ConfigError
from slidefed.common.run_config import RunConfig
from slidefed.demo import federation as fed
from slidefed.demo import tiles as tile_demo


def check_slides_args(sites: int, rounds: int) -> None:
    """Raise :class:`ConfigError` for ``--sites`` or ``--rounds`` below 1."""
    if sites < 1:
        raise ConfigError(f"--sites {sites} must be at least 1; try --sites 3")
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be at least 1; try --rounds 3")


def check_tiles_args(rounds: int, tiles_dir: Path | None) -> Path:
    """The folder of labelled tiles; :class:`ConfigError` for ``--rounds`` below 1."""
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be at least 1; try --rounds 5")
    return tile_demo.find_tiles_dir(tiles_dir)


def run_slides_demo(
    folder: Path, *, sites: int, rounds: int, seed: int, verbose: bool, console: Any
) -> None:
    """Synthesise ``sites`` hospitals in ``folder`` and train ``rounds`` rounds."""
    from slidefed.progress import LiveRounds
    from slidefed.simulation import run_simulation

    console.print(f"[bold]slidefed demo[/] in {folder}")
    plan = fed.plan_sites(folder, sites, seed)
    started = time.perf_counter()
    _synthesise(console, plan)
    _prepare(console, plan)
    run = fed.demo_run_config(folder, plan, rounds, seed)
    console.print(
        f"Federated training: {sites} sites, {rounds} rounds, DP-SGD per patient, "
        f"target epsilon {run.target_epsilon} per site"
    )
    with LiveRounds(folder / "run" / "metrics.jsonl", rounds, console):
        run_simulation(run, n_sites=sites, total_cpus=fed.cpu_count(), verbose=verbose)
    console.print(_slides_table(folder, plan))
    from slidefed.demo.local_eval import evaluate_final_model
    from slidefed.server.metrics import MetricsLog

    local = evaluate_final_model(folder / "run", [s.config_path for s in plan], run)
    MetricsLog(folder / "run", resume=True, target_epsilon=run.target_epsilon).plot(
        exact=local["rounds"]
    )
    per_round = ", ".join(f"{r['auc']:.3f}" for r in local["rounds"])
    console.print(
        f"Final model on all {local['patients']} held-out patients, evaluated here "
        f"by the demo (which plays every site): AUC {local['auc']:.3f}, accuracy "
        f"{local['accuracy']:.3f} (AUC after each round: {per_round}). The table "
        "shows what the federation saw: metrics from noised statistics, charged to "
        "each site's budget."
    )
    console.print(
        f"Done in {time.perf_counter() - started:.0f} s. Everything is in {folder}"
    )


def _synthesise(console: Any, plan: list[fed.DemoSite]) -> None:
    """Write every site's slides, with one progress bar over all of them."""
    from rich.progress import Progress

    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("Synthesising slides", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        fed.synthesise(
            plan, workers=max(1, min(fed.cpu_count(), len(plan))), on_progress=update
        )


def _prepare(console: Any, plan: list[fed.DemoSite]) -> None:
    """Prepare every site's slides (tiles and features), a progress bar each."""
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


def _slides_table(folder: Path, plan: list[fed.DemoSite]) -> Any:
    """Held-out metrics and each site's epsilon, per round."""
    from rich.table import Table

    rows = _metrics(folder)
    eps = fed.site_epsilons(plan)
    table = Table(
        title="Held-out patients, per round",
        caption="ε: each site's ledger after the round, its evaluation included "
        "(the round lines above show ε after training)",
    )
    for col in ("round", "accuracy (noised)", "AUC (noised)"):
        table.add_column(col, justify="right")
    for site in plan:
        table.add_column(f"ε {site.name}", justify="right")
    for row in fed.summary_rows(rows):
        cells = [str(row["round"])]
        for key in ("accuracy", "auc"):
            value = row[key]
            cells.append("-" if value is None else f"{value:.3f}")
        for site in plan:
            value = eps[site.name].get(row["round"])
            cells.append("-" if value is None else f"{value:.2f}")
        table.add_row(*cells)
    return table


def _metrics(folder: Path) -> list[dict[str, Any]]:
    """The rows of the run's ``metrics.jsonl``."""
    text = (folder / "run" / "metrics.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines() if x]


def run_tiles_demo(
    source: Path, folder: Path, *, rounds: int, seed: int, verbose: bool, console: Any
) -> None:
    """Split the tiles of ``source`` into three sites in ``folder`` and train."""
    from slidefed.simulation import run_simulation

    console.print(
        f"[bold]slidefed demo --data tiles[/] in {folder} (tiles from {source})"
    )
    sites, classes = tile_demo.build_tile_sites(source, folder, seed=seed)
    for line in classes.lines(source):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    run = tile_demo.tiles_run_config(folder, sites, rounds, seed, classes.labels)
    started = time.perf_counter()
    run_simulation(run, n_sites=len(sites), total_cpus=fed.cpu_count(), verbose=verbose)
    federated = tile_demo.federated_summary(_metrics(folder)[-1], run.label_list())
    baseline = tile_demo.centralised_baseline(
        sites, run, epochs=run.local_epochs * run.num_server_rounds
    )
    eps = tile_demo.spent_epsilons(sites)
    console.print(_tiles_table(run, federated, baseline))
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


def _tiles_table(
    run: RunConfig, federated: dict[str, Any], baseline: dict[str, Any]
) -> Any:
    """Held-out accuracy per class, federated with DP against centralised."""
    from rich.table import Table

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
    return table


__all__ = ["check_slides_args", "check_tiles_args", "run_slides_demo", "run_tiles_demo"]
