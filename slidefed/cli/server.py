"""``slidefed server ...``: commands for the coordinator.

``init`` makes the federation's PKI and ``server.toml``; ``start`` runs
``flower-superlink`` on loopback (TLS, SuperNode authentication) behind nginx, which
serves only the Fleet API on the public address;
``register-site`` registers a site's P-384 public key with the running SuperLink.
The work is done by :mod:`slidefed.deploy.coordinator` and
:mod:`slidefed.deploy.registration`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

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
        str, typer.Option(help="Interface the public front (nginx) listens on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Public HTTPS port (the front serves the Fleet API).")
    ] = 8000,
    superlink_port: Annotated[
        int | None,
        typer.Option(help="The SuperLink's own port on 127.0.0.1 (default port+1)."),
    ] = None,
) -> None:
    """Create the root CA, the SuperLink certificate, the audit key and server.toml.

    Running it again reuses what exists and never replaces the CA.
    """
    from slidefed.deploy.coordinator import init_coordinator

    setup = init_coordinator(
        folder,
        dns_names=dns or (),
        ip_addresses=ip or (),
        name=name,
        host=host,
        port=port,
        superlink_port=superlink_port,
        notify=print,
    )
    print(
        f"CA fingerprint (sha256) {setup.ca_fingerprint}: give {setup.ca_cert} "
        "to every site and have them compare this fingerprint"
    )
    print(f"next: slidefed server start --config {setup.config_path}")


@server_app.command("start")
def server_start(
    config: ServerConfigOpt,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="No TLS, no node authentication: tests only."),
    ] = False,
) -> None:
    """Run the SuperLink on loopback and its public front (nginx) in the foreground.

    The public address serves the Fleet API (the sites' SuperNodes) and /health
    only; the Control API (flwr run, ls, supernode register) answers on this host.
    """
    from slidefed.deploy.coordinator import coordinator_commands
    from slidefed.deploy.supervisor import supervise
    from slidefed.server.config import load_server_config

    commands, env = coordinator_commands(config, insecure=insecure)
    argv = commands[0]
    where = f"{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}"
    if insecure:
        print(_INSECURE_WARNING, file=sys.stderr)
        print(f"starting flower-superlink on {where}", flush=True)
        sys.stderr.flush()
        # exec: the SuperLink takes this process's place, so signals reach it.
        os.execve(argv[0], argv, env)  # noqa: S606 - a fixed program, no shell
    server = load_server_config(config).server
    print(
        f"starting flower-superlink on {where} (FLWR_HOME {env['FLWR_HOME']}) and "
        f"its front on {server.host}:{server.port} (Fleet API and /health only)",
        flush=True,
    )
    ended = supervise(commands, env)
    raise typer.Exit(ended.code)


@server_app.command("register-site")
def server_register_site(
    key: Annotated[Path, typer.Argument(help="The site's node_key.pub.")],
    name: Annotated[str, typer.Option("--name", help="Site name.")],
    config: ServerConfigOpt,
) -> None:
    """Register a site's SuperNode key with the running SuperLink."""
    from slidefed.deploy.registration import register_site

    entry = register_site(config, key, name)
    print(f"registered site {name} as node {entry.node_id}; recorded in {config}")


__all__ = ["server_app"]
