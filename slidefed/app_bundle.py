"""The app that sites approve: slidefed's Flower app folder, its FAB and the FAB's hash.

``slidefed app build`` writes the app folder (a ``pyproject.toml`` whose components
point at the installed :mod:`slidefed.server.app` and :mod:`slidefed.client.app`,
see :func:`slidefed.simulation.write_app_dir`), builds the FAB from it exactly as
``flwr run`` does, and saves the FAB beside it. Flower builds FABs
deterministically, so the hash printed here is the hash that ``slidefed launch``
submits for the same folder and that each site checks against its
``approved_apps.toml``.

The FAB carries no slidefed code: every site runs the slidefed it installed, and
the coordinator runs its own. What a site approves is this app's configuration
(its components and run defaults); the hash changes when either changes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import ConfigError

DEFAULT_APP_DIR = "slidefed-app"
"""The folder ``slidefed app build`` writes when given no ``--out``."""

_OURS = {"pyproject.toml"}


class BuiltApp(BaseModel):
    """An app folder, the FAB built from it and the FAB's SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: Path
    fab: Path
    fab_hash: str


def _check_folder(folder: Path) -> None:
    """Refuse a folder holding anything but a previous build (it would change the FAB).

    Raises
    ------
    ConfigError
        If ``folder`` is a file, or holds files other than ``pyproject.toml`` and
        ``.fab`` files.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; give a folder for the app")
    if not folder.is_dir():
        return
    other = sorted(
        p.name for p in folder.iterdir() if p.name not in _OURS and p.suffix != ".fab"
    )
    if other:
        raise ConfigError(
            f"--out {folder} holds {', '.join(other[:3])}"
            f"{' ...' if len(other) > 3 else ''}, which would become part of the "
            "app; give an empty folder (or one that 'slidefed app build' made)"
        )


def build_app(folder: Path) -> BuiltApp:
    """Write slidefed's app folder, build its FAB beside ``pyproject.toml``, hash it.

    Parameters
    ----------
    folder : Path
        The app folder (created; a previous build in it is replaced).

    Returns
    -------
    BuiltApp
        The folder, the ``.fab`` file (named as ``flwr build`` names it) and its hash.

    Raises
    ------
    ConfigError
        If the folder holds other files, or Flower cannot build the FAB.
    """
    from flwr.cli.build import build_fab_from_disk, get_fab_filename

    from slidefed.deploy.approval import fab_hash_of_bytes
    from slidefed.simulation import write_app_dir

    folder = folder.resolve()
    _check_folder(folder)
    write_app_dir(folder)
    for old in folder.glob("*.fab"):
        old.unlink()
    try:
        content = build_fab_from_disk(folder)
    except ValueError as exc:
        raise ConfigError(f"{folder}: Flower cannot build a FAB: {exc}") from exc
    fab_hash = fab_hash_of_bytes(content)
    project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    name = get_fab_filename(project, fab_hash)
    fab = folder / name
    fab.write_bytes(content)
    return BuiltApp(folder=folder, fab=fab, fab_hash=fab_hash)


def send_to_sites(built: BuiltApp) -> list[str]:
    """What to tell the sites, and how to launch, as lines for the researcher.

    Parameters
    ----------
    built : BuiltApp
        The result of :func:`build_app`.

    Returns
    -------
    list of str
        Lines to print.
    """
    return [
        f"app folder: {built.folder}",
        f"FAB:        {built.fab}",
        f"FAB sha256: {built.fab_hash}",
        "",
        "Send each site the sha256 above (and the .fab, if they want to check it",
        "with 'sha256sum'), by a channel they trust; each site approves it with",
        f"  slidefed site approve --config site.toml --hash {built.fab_hash}",
        "or, from the .fab file:",
        f"  slidefed site approve --config site.toml --fab {built.fab.name}",
        "Then launch this same app (sites refuse any other hash):",
        f'  slidefed launch CONNECTION --app {built.folder} --run-config "..."',
    ]


__all__ = ["DEFAULT_APP_DIR", "BuiltApp", "build_app", "send_to_sites"]
