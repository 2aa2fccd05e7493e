"""``slidefed server ...``: commands for the coordinator.

``init`` makes the federation's PKI and ``server.toml``; ``start`` runs
``flower-superlink`` with TLS and SuperNode authentication in the foreground;
``register-site`` registers a site's P-384 public key with the running SuperLink.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from slidefed.common.errors import ConfigError, FederationError

server_app = typer.Typer(
    help="Run the coordinator.", no_args_is_help=True, rich_markup_mode=None
)

ServerConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Path of server.toml.")
]

_INSECURE_WARNING = """\
WARNING: --insecure: the SuperLink runs WITHOUT TLS and WITHOUT SuperNode
WARNING: authentication. Model updates travel in clear text and anyone who reaches
WARNING: the port can join, submit runs and read results. For tests only."""


def _bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    from shutil import which

    found = which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found; install slidefed (it brings flwr) into this "
            "environment, or put its bin folder on PATH"
        )
    return found


def _flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def write_connection(config_path: Path) -> Path:
    """Write the coordinator's Flower CLI connection (``$FLWR_HOME/config.toml``).

    Parameters
    ----------
    config_path : Path
        ``server.toml``.

    Returns
    -------
    Path
        The ``FLWR_HOME`` folder; its ``config.toml`` has the connection
        ``slidefed`` (the default) to the SuperLink, verified with the CA.
    """
    from slidefed.server.config import CONNECTION, load_server_config

    config = load_server_config(config_path)
    home = config.resolve(config.state.flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    ca = config.resolve(config.tls.ca_cert)
    text = (
        "# Written by slidefed server init/register-site: the coordinator's connection.\n"
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{config.server.control_address}"\n'
        f'root-certificates = "{ca}"\n'
    )
    (home / "config.toml").write_text(text, encoding="utf-8")
    return home


@server_app.command("init")
def server_init(
    folder: Annotated[Path, typer.Argument(help="Coordinator folder to create.")],
    dns: Annotated[
        list[str] | None,
        typer.Option("--dns", help="DNS name of the SuperLink (repeat)."),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", help="IP address of the SuperLink (repeat)."),
    ] = None,
    name: Annotated[str, typer.Option(help="Coordinator name.")] = "coordinator",
    host: Annotated[
        str, typer.Option(help="Interface flower-superlink listens on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SuperLink port (one HTTPS port).")] = 8000,
) -> None:
    """Create the root CA, the SuperLink certificate, the audit key and server.toml.

    Running it again reuses what exists and never replaces the CA.
    """
    from slidefed.common.crypto import generate_audit_key
    from slidefed.common.pki import (
        certificate_info,
        ensure_ca,
        ensure_server_certificate,
    )
    from slidefed.server.config import (
        ServerConfig,
        ServerSection,
        load_server_config,
        save_server_config,
    )

    dns_names = list(dns) if dns else (["localhost"] if not ip else [])
    ips = list(ip) if ip else (["127.0.0.1"] if not dns else [])
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} must be between 1 and 65535")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "server.toml"
    if target.is_file():
        config = load_server_config(target)
        print(f"kept {target} (its sites and settings stay as they are)")
    else:
        control_host = "127.0.0.1" if "127.0.0.1" in ips else (dns_names or ips)[0]
        public_host = (dns_names or ips)[0]
        config = ServerConfig(
            server=ServerSection(
                name=name,
                host=host,
                port=port,
                public_address=f"{public_host}:{port}",
                control_address=f"{control_host}:{port}",
            ),
            base_dir=folder.resolve(),
        )
    tls = config.tls
    results = [
        ensure_ca(config.resolve(tls.ca_cert), config.resolve(tls.ca_key)),
        ensure_server_certificate(
            config.resolve(tls.ca_cert),
            config.resolve(tls.ca_key),
            config.resolve(tls.cert),
            config.resolve(tls.key),
            dns_names=dns_names,
            ip_addresses=ips,
        ),
    ]
    audit_key = config.resolve(config.state.audit_key)
    if not audit_key.is_file():
        generate_audit_key(audit_key)
        print(f"created {audit_key} (+ .pub for auditors)")
    for result in results:
        for path in result.created:
            print(f"created {path}")
        for path in result.reused:
            print(f"reused  {path}")
    if not target.is_file():
        save_server_config(config, target)
        print(f"created {target}")
    write_connection(target)
    ca_info = certificate_info(config.resolve(tls.ca_cert))
    print(
        f"CA fingerprint (sha256) {ca_info.sha256}: give {config.resolve(tls.ca_cert)} "
        "to every site and have them compare this fingerprint"
    )
    print(f"next: slidefed server start --config {target}")


def superlink_command(
    config_path: Path, *, insecure: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The ``flower-superlink`` command and environment for ``server start``.

    Parameters
    ----------
    config_path : Path
        ``server.toml``.
    insecure : bool
        No TLS and no SuperNode authentication (tests only).

    Returns
    -------
    tuple of (list of str, dict of str to str)
        argv and environment.

    Raises
    ------
    ConfigError
        If certificates are missing, unreadable, mismatched or expired.
    """
    from slidefed.common.pki import certificate_info, load_certificate, verify_issued_by
    from slidefed.server.config import load_server_config

    config = load_server_config(config_path)
    database = config.resolve(config.state.database)
    database.parent.mkdir(parents=True, exist_ok=True)
    home = config.resolve(config.state.superlink_home)
    home.mkdir(parents=True, exist_ok=True)
    argv = [
        _bin("flower-superlink"),
        "--host",
        config.server.host,
        "--port",
        str(config.server.port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
    ]
    if insecure:
        argv.append("--insecure")
        return argv, _flower_env(home)
    ca, cert, key = (
        config.resolve(config.tls.ca_cert),
        config.resolve(config.tls.cert),
        config.resolve(config.tls.key),
    )
    if not key.is_file():
        raise ConfigError(f"{key} is missing; run 'slidefed server init' again")
    info = certificate_info(cert)
    if info.days_left() <= 0:
        raise ConfigError(
            f"{cert} expired on {info.not_after:%Y-%m-%d}; move it and its key aside "
            "and run 'slidefed server init' again"
        )
    if not verify_issued_by(load_certificate(cert), load_certificate(ca)):
        raise ConfigError(f"{cert} was not issued by {ca}; run 'slidefed server init'")
    argv += [
        "--ssl-ca-certfile",
        str(ca),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--enable-supernode-auth",
    ]
    return argv, _flower_env(home)


@server_app.command("start")
def server_start(
    config: ServerConfigOpt,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="No TLS, no node authentication: tests only."),
    ] = False,
) -> None:
    """Run flower-superlink (TLS, SuperNode authentication) in the foreground."""
    argv, env = superlink_command(config, insecure=insecure)
    if insecure:
        print(_INSECURE_WARNING, file=sys.stderr)
    print(
        f"starting flower-superlink on {argv[argv.index('--host') + 1]}:"
        f"{argv[argv.index('--port') + 1]} (FLWR_HOME {env['FLWR_HOME']})",
        flush=True,
    )
    sys.stderr.flush()
    # exec: the SuperLink takes this process's place, so signals reach it directly.
    os.execve(argv[0], argv, env)  # noqa: S606 - a fixed program, no shell


def _read_node_public_key(path: Path) -> str:
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


@server_app.command("register-site")
def server_register_site(
    key: Annotated[Path, typer.Argument(help="The site's node_key.pub.")],
    name: Annotated[str, typer.Option("--name", help="Site name.")],
    config: ServerConfigOpt,
) -> None:
    """Register a site's SuperNode key with the running SuperLink."""
    from pydantic import ValidationError

    from slidefed.server.config import (
        CONNECTION,
        RegisteredSite,
        load_server_config,
        save_server_config,
    )

    cfg = load_server_config(config)
    public_key = _read_node_public_key(key)
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
    home = write_connection(config)
    argv = [
        _bin("flwr"),
        "supernode",
        "register",
        str(key.resolve()),
        CONNECTION,
        "--name",
        name,
        "--format",
        "json",
    ]
    try:
        done = subprocess.run(
            argv, env=_flower_env(home), capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        raise FederationError(
            f"the SuperLink at {cfg.server.control_address} did not answer in 120 s"
        ) from exc
    node_id = _registered_node_id(done.stdout, cfg.server.control_address)
    entry = entry.model_copy(
        update={
            "node_id": node_id,
            "registered_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    save_server_config(cfg.model_copy(update={"sites": (*cfg.sites, entry)}), config)
    print(f"registered site {name} as node {node_id}; recorded in {config}")


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


__all__ = ["server_app", "superlink_command", "write_connection"]
