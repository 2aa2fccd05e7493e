"""The environment of the Flower processes and commands that slidefed starts.

One place says how slidefed runs Flower: without telemetry or update checks, without
installing an app's dependencies at run time, and with this Python's ``bin`` folder
on ``PATH`` (the SuperLink and SuperNode start their helpers, such as
``flower-superexec``, by name). This module imports neither Flower nor any other
slidefed package, so the site, the coordinator and the simulation all use it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import MutableMapping
from pathlib import Path

from slidefed.common.errors import ConfigError

QUIET_DEFAULTS = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
"""Flower's settings for runs started by slidefed (an operator's own value wins)."""

APPROVED_FAB_ENV = "SLIDEFED_APPROVED_FAB"
"""Set by the site's approval gate, in the ClientApp process, to the SHA-256 of the
FAB it checked and let run; the ClientApp writes it into ``run_joined``."""

NO_DEPENDENCY_INSTALL = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
"""Forced on in :func:`flower_env`: a site never installs what an app asks for."""


def quiet_flower_defaults(env: MutableMapping[str, str]) -> None:
    """Set :data:`QUIET_DEFAULTS` in ``env`` where it has no value of its own.

    Parameters
    ----------
    env : MutableMapping of str to str
        An environment, e.g. ``os.environ`` (changed in place).
    """
    for key, value in QUIET_DEFAULTS.items():
        env.setdefault(key, value)


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for a Flower process: its own FLWR_HOME, quiet and offline.

    Parameters
    ----------
    flwr_home : Path, optional
        The process's ``FLWR_HOME`` (default: keep the caller's).

    Returns
    -------
    dict of str to str
        A copy of ``os.environ`` with Flower's settings and this Python's bin
        folder first on PATH (Flower starts its helpers by name).
    """
    env = dict(os.environ)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    quiet_flower_defaults(env)
    env[NO_DEPENDENCY_INSTALL] = "1"
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    return env


def flower_executable(name: str) -> str:
    """Path of a Flower command, preferring the one beside this Python.

    Parameters
    ----------
    name : str
        ``flower-supernode``, ``flower-superlink``, ``flwr``...

    Returns
    -------
    str
        Absolute path.

    Raises
    ------
    ConfigError
        If the command is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found; install slidefed (it brings flwr) into this "
            "environment, or put its bin folder on PATH"
        )
    return found


__all__ = [
    "APPROVED_FAB_ENV",
    "NO_DEPENDENCY_INSTALL",
    "QUIET_DEFAULTS",
    "flower_env",
    "flower_executable",
    "quiet_flower_defaults",
]
