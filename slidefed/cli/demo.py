"""``slidefed demo`` and ``slidefed synth``: the demo federation and synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidefed.cli._console import console, setup_logging
from slidefed.common.errors import ConfigError

synth_app = typer.Typer(
    help="Synthetic data.", no_args_is_help=True, rich_markup_mode=None
)


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
        Path | None,
        typer.Option(
            help="Folder of class folders of labelled tiles; the classes are the "
            "folder names (e.g. lung_aca, lung_n, lung_scc)."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show engine logs.")
    ] = False,
) -> None:
    """Synthesise hospitals (or split real tiles) and train a federated DP model."""
    from slidefed.demo import runner
    from slidefed.demo.federation import check_out_dir

    if data not in ("slides", "tiles"):
        raise ConfigError(f"--data {data!r} must be 'slides' or 'tiles'")
    if data == "tiles":
        source = runner.check_tiles_args(rounds, tiles_dir)
        folder = check_out_dir(out)
        setup_logging(verbose)
        runner.run_tiles_demo(
            source, folder, rounds=rounds, seed=seed, verbose=verbose, console=console()
        )
        return
    runner.check_slides_args(sites, rounds)
    folder = check_out_dir(out)
    setup_logging(verbose)
    runner.run_slides_demo(
        folder,
        sites=sites,
        rounds=rounds,
        seed=seed,
        verbose=verbose,
        console=console(),
    )


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


__all__ = ["demo", "synth_app"]
