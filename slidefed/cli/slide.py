"""``slidefed slide ...``: look at slide files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from slidefed.common.errors import SlidefedError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

slide_app = typer.Typer(
    help="Look at slide files.", no_args_is_help=True, rich_markup_mode=None
)


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
    from slidefed.client.slides import open_slide

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


__all__ = ["slide_app"]
