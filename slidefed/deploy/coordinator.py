"""The coordinator's setup: its PKI and ``server.toml``, and the SuperLink command.

``slidefed server init`` (:func:`init_coordinator`) makes the federation's root CA,
the SuperLink certificate, the audit key, ``server.toml`` and the coordinator's
Flower CLI connection (:func:`write_connection`); ``server start`` runs
:func:`superlink_command`. Registering sites is :mod:`slidefed.deploy.registration`.
This module loads neither torch nor Flower: Flower's programs run as separate
processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import ConfigError
from slidefed.common.flower_env import flower_env, flower_executable
from slidefed.common.tomlfile import dump_toml
from slidefed.server.config import (
    CONNECTION,
    SERVER_CONFIG_ENV,
    ServerConfig,
    ServerSection,
    load_server_config,
    save_server_config,
)

_CONNECTION_HEADER = (
    "# Written by slidefed server init/register-site: the coordinator's connection.\n"
)


class CoordinatorSetup(BaseModel):
    """What ``server init`` made, for its last lines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_path: Path
    ca_cert: Path
    ca_fingerprint: str


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
    config = load_server_config(config_path)
    home = config.resolve(config.state.flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    connection = {
        "address": config.server.control_address,
        "root-certificates": str(config.resolve(config.tls.ca_cert)),
    }
    text = dump_toml({"superlink": {"default": CONNECTION, CONNECTION: connection}})
    (home / "config.toml").write_text(_CONNECTION_HEADER + text, encoding="utf-8")
    return home


def init_coordinator(
    folder: Path,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    name: str = "coordinator",
    host: str = "127.0.0.1",
    port: int = 8000,
    superlink_port: int | None = None,
    notify: Callable[[str], None] = lambda _line: None,
) -> CoordinatorSetup:
    """Create (or reuse) the coordinator's PKI, audit key and ``server.toml``.

    Running it again reuses what exists and never replaces the CA.

    Parameters
    ----------
    folder : Path
        The coordinator's folder (created when missing).
    dns_names, ip_addresses : sequence of str
        Names of the SuperLink (default: ``localhost`` and ``127.0.0.1``).
    name, host, port
        The ``[server]`` section of a new ``server.toml``: the public front
        (nginx) listens on ``host:port``.
    superlink_port : int, optional
        The SuperLink's own port on 127.0.0.1 (default ``port + 1``).
    notify : callable
        Told one line per file kept, created or reused.

    Returns
    -------
    CoordinatorSetup
        ``server.toml``, the CA certificate and its fingerprint.

    Raises
    ------
    ConfigError
        On a bad port or name, or files that do not fit (never overwritten).
    """
    from slidefed.common.pki import certificate_info

    # Neither given: the SuperLink is this machine, by name and by address.
    dns = list(dns_names) or (["localhost"] if not ip_addresses else [])
    ips = list(ip_addresses) or (["127.0.0.1"] if not dns_names else [])
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} must be between 1 and 65535")
    if superlink_port is not None and not 1 <= superlink_port <= 65535:
        raise ConfigError(f"--superlink-port {superlink_port} must be 1 to 65535")
    public_host = (dns or ips)[0]
    # The SuperLink itself listens on loopback: its certificate names it there too.
    dns = dns + [n for n in ("localhost",) if n not in dns]
    ips = ips + [a for a in ("127.0.0.1",) if a not in ips]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "server.toml"
    if target.is_file():
        config = load_server_config(target)
        notify(f"kept {target} (its sites and settings stay as they are)")
    else:
        config = _new_config(
            folder,
            public_host,
            name=name,
            host=host,
            port=port,
            superlink_port=superlink_port,
        )
    _ensure_files(config, target, dns, ips, notify)
    ca_cert = config.resolve(config.tls.ca_cert)
    return CoordinatorSetup(
        config_path=target,
        ca_cert=ca_cert,
        ca_fingerprint=certificate_info(ca_cert).sha256,
    )


def _ensure_files(
    config: ServerConfig,
    target: Path,
    dns: list[str],
    ips: list[str],
    notify: Callable[[str], None],
) -> None:
    """The PKI, the audit key, ``server.toml`` and the connection, in that order."""
    from slidefed.common.crypto import generate_audit_key

    pki_lines = _ensure_pki(config, dns, ips)
    audit_key = config.resolve(config.state.audit_key)
    if not audit_key.is_file():
        generate_audit_key(audit_key)
        notify(f"created {audit_key} (+ .pub for auditors)")
    for line in pki_lines:
        notify(line)
    if not target.is_file():
        save_server_config(config, target)
        notify(f"created {target}")
    write_connection(target)


def _new_config(
    folder: Path,
    public_host: str,
    *,
    name: str,
    host: str,
    port: int,
    superlink_port: int | None,
) -> ServerConfig:
    inner = superlink_port or (port + 1 if port < 65535 else port - 1)
    if inner == port:
        raise ConfigError(
            f"--superlink-port {inner} is the public port; give the SuperLink another"
        )
    return ServerConfig(
        server=ServerSection(
            name=name,
            host=host,
            port=port,
            superlink_port=inner,
            public_address=f"{public_host}:{port}",
            # The Control API answers on the coordinator host only.
            control_address=f"127.0.0.1:{inner}",
        ),
        base_dir=folder.resolve(),
    )


def _ensure_pki(config: ServerConfig, dns: list[str], ips: list[str]) -> list[str]:
    """The CA and the SuperLink certificate; one ``created``/``reused`` line a file."""
    from slidefed.common.pki import ensure_ca, ensure_server_certificate

    tls = config.tls
    ca_cert, ca_key = config.resolve(tls.ca_cert), config.resolve(tls.ca_key)
    results = [
        ensure_ca(ca_cert, ca_key),
        ensure_server_certificate(
            ca_cert,
            ca_key,
            config.resolve(tls.cert),
            config.resolve(tls.key),
            dns_names=dns,
            ip_addresses=ips,
        ),
    ]
    lines: list[str] = []
    for result in results:
        lines += [f"created {path}" for path in result.created]
        lines += [f"reused  {path}" for path in result.reused]
    return lines


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
    config = load_server_config(config_path)
    database = config.resolve(config.state.database)
    database.parent.mkdir(parents=True, exist_ok=True)
    home = config.resolve(config.state.superlink_home)
    home.mkdir(parents=True, exist_ok=True)
    # Behind the front, the SuperLink answers on loopback only; --insecure (tests)
    # has no front and listens where the front would.
    host, port = (
        (config.server.host, config.server.port)
        if insecure
        else ("127.0.0.1", config.server.superlink_port_or_default)
    )
    # Flower's SuperLink, with a longer SQLite lock wait (see superlink_main).
    flower_executable("flower-superlink")  # installed, or a clear refusal
    argv = [
        sys.executable,
        "-m",
        "slidefed.deploy.superlink_main",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
    ]
    argv += ["--insecure"] if insecure else _tls_arguments(config)
    env = flower_env(home)
    # The SuperLink starts its SuperExec by name: ours reaps every ServerApp
    # process (Flower's leaves the last one defunct).
    from slidefed.deploy.task_processes import superexec_shim

    shim = superexec_shim(home / "bin")
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    # The ServerApp signs the coordinator's audit log with the key of server init.
    env[SERVER_CONFIG_ENV] = str(config_path.resolve())
    return argv, env


def coordinator_commands(
    config_path: Path, *, insecure: bool = False
) -> tuple[list[list[str]], dict[str, str]]:
    """The processes of ``server start``: the SuperLink, then its public front.

    Parameters
    ----------
    config_path : Path
        ``server.toml``.
    insecure : bool
        The SuperLink alone on the public address, no TLS, no front (tests only).

    Returns
    -------
    tuple of (list of list of str, dict of str to str)
        The commands (SuperLink first) and their environment.

    Raises
    ------
    ConfigError
        As :func:`superlink_command`, or when nginx is missing.
    """
    from slidefed.deploy.front import front_command

    argv, env = superlink_command(config_path, insecure=insecure)
    if insecure:
        return [argv], env
    return [argv, front_command(load_server_config(config_path))], env


def _tls_arguments(config: ServerConfig) -> list[str]:
    """TLS and SuperNode-auth flags, after checking the certificate still serves."""
    from slidefed.common.pki import certificate_info, load_certificate, verify_issued_by

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
    return [
        "--ssl-ca-certfile",
        str(ca),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--enable-supernode-auth",
    ]


__all__ = [
    "CoordinatorSetup",
    "coordinator_commands",
    "init_coordinator",
    "superlink_command",
    "write_connection",
]
