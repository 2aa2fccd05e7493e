"""Registering a site with the running SuperLink: ``slidefed server register-site``.

The site's P-384 node key is checked here (so that a wrong file never reaches
Flower), registered with ``flwr supernode register`` over the coordinator's own
connection, and recorded in ``server.toml`` with the node id the SuperLink gave it.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import tempfile
from pathlib import Path

from pydantic import ValidationError

from slidefed.common.errors import ConfigError, FederationError
from slidefed.common.flower_env import flower_env, flower_executable
from slidefed.deploy.coordinator import write_connection
from slidefed.server.config import (
    CONNECTION,
    RegisteredSite,
    ServerConfig,
    load_server_config,
    save_server_config,
)

REGISTER_TIMEOUT_S = 120
"""How long ``register-site`` waits for ``flwr supernode register``."""


def read_node_public_key(path: Path) -> str:
    """A site's SuperNode public key (``ecdsa-sha2-nistp384 AAAA...``, no comment).

    Parameters
    ----------
    path : Path
        The site's ``node_key.pub``.

    Returns
    -------
    str
        Key type and key, as ``server.toml`` and Flower store them.

    Raises
    ------
    ConfigError
        If the file is missing, not an OpenSSH public key, or not P-384.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no such file; ask the site for its state/keys/node_key.pub"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as an OpenSSH public key") from exc
    parts = text.split()
    try:
        key = serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"{path} is not an OpenSSH public key; give the site's node_key.pub"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ConfigError(
            f"{path} is not a P-384 key (ecdsa-sha2-nistp384); give the site's "
            "node_key.pub, not its audit key"
        )
    return " ".join(parts[:2])


def register_site(config_path: Path, key: Path, name: str) -> RegisteredSite:
    """Register a site's node key with the running SuperLink; record it.

    Parameters
    ----------
    config_path : Path
        ``server.toml`` (the site is added to its ``[[sites]]``).
    key : Path
        The site's ``node_key.pub``.
    name : str
        Site name.

    Returns
    -------
    RegisteredSite
        The entry as recorded, with the SuperLink's node id.

    Raises
    ------
    ConfigError
        If the key or name is wrong or already registered (checked before
        Flower is called).
    FederationError
        If the SuperLink does not answer or refuses the registration.
    """
    cfg = load_server_config(config_path)
    entry = _new_site(cfg, key, name)
    home = write_connection(config_path)
    address = cfg.server.control_address
    stdout = _flwr_register(key, name, home=home, address=address)
    entry = entry.model_copy(
        update={
            "node_id": _registered_node_id(stdout, address),
            "registered_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    save_server_config(
        cfg.model_copy(update={"sites": (*cfg.sites, entry)}), config_path
    )
    return entry


def _flwr_register(key: Path, name: str, *, home: Path, address: str) -> str:
    """Run ``flwr supernode register``; its standard output."""
    argv = [
        flower_executable("flwr"),
        "supernode",
        "register",
        str(key.resolve()),
        CONNECTION,
        "--name",
        name,
        "--format",
        "json",
    ]
    # flwr reads a connection name that is also a folder of the current directory
    # as an app path ("./slidefed"): run it from an empty folder of its own.
    with tempfile.TemporaryDirectory(prefix="slidefed-register-") as empty:
        try:
            done = subprocess.run(
                argv,
                env=flower_env(home),
                capture_output=True,
                text=True,
                timeout=REGISTER_TIMEOUT_S,
                cwd=empty,
            )
        except subprocess.TimeoutExpired as exc:
            raise FederationError(
                f"the SuperLink at {address} did not answer in {REGISTER_TIMEOUT_S} s"
            ) from exc
    return done.stdout


def _new_site(cfg: ServerConfig, key: Path, name: str) -> RegisteredSite:
    public_key = read_node_public_key(key)
    try:
        entry = RegisteredSite(name=name, public_key=public_key)
    except ValidationError as exc:
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '.', '_' or '-'"
        ) from exc
    if cfg.site(name) is not None:
        raise ConfigError(
            f"a site called {name!r} is registered already; pick another name"
        )
    if any(s.public_key == public_key for s in cfg.sites):
        other = next(s.name for s in cfg.sites if s.public_key == public_key)
        raise ConfigError(f"{key} is registered already, as site {other!r}")
    return entry


def _registered_node_id(stdout: str, address: str) -> int:
    try:
        start = stdout.index("{")
        answer = json.loads(stdout[start:])
    except ValueError as exc:
        raise FederationError(
            f"no answer from 'flwr supernode register' (is the SuperLink at {address} "
            "running? start it with 'slidefed server start')"
        ) from exc
    if not answer.get("success"):
        message = str(answer.get("error-message", "unknown error")).strip()
        message = message.splitlines()[-1] if message else "unknown error"
        raise FederationError(
            f"the SuperLink at {address} refused the registration: {message}"
        )
    return int(answer["node-id"])


__all__ = ["REGISTER_TIMEOUT_S", "read_node_public_key", "register_site"]
