"""``slidefed site start | doctor | approve | node-key``: running a site's node."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from slidefed.cli.site import ConfigOpt, JsonOpt, site_app
from slidefed.common.errors import ConfigError

SuperlinkOpt = Annotated[
    str | None,
    typer.Option("--superlink", help="SuperLink address HOST:PORT."),
]
CaOpt = Annotated[
    Path | None,
    typer.Option("--ca", help="The federation's CA certificate (pki/ca.crt)."),
]
InsecureOpt = Annotated[
    bool,
    typer.Option("--insecure", help="No TLS, no node authentication: tests only."),
]

_INSECURE_WARNING = """\
WARNING: --insecure: this site connects WITHOUT TLS and WITHOUT node
WARNING: authentication. Model updates travel in clear text and the coordinator
WARNING: cannot tell this site from anyone else. For tests only."""


_CAUSES = {
    "not_registered": (
        "the SuperLink does not know this site's node key; the coordinator must "
        "register state/keys/node_key.pub ('slidefed server register-site')"
    ),
    "tls_untrusted": (
        "the SuperLink's certificate does not verify with --ca; use the federation's "
        "CA (pki/ca.crt from the coordinator) and an address its certificate names"
    ),
}


@site_app.command("node-key")
def site_node_key(config: ConfigOpt) -> None:
    """Create the site's SuperNode key if missing; print its public half."""
    from slidefed.client.config import load_site_config
    from slidefed.deploy.site_node import ensure_node_key

    public = ensure_node_key(load_site_config(config))
    print(public.read_text(encoding="ascii").strip())
    print(
        f"send {public} to the coordinator; it runs "
        "'slidefed server register-site node_key.pub --name SITE --config server.toml'",
        file=sys.stderr,
    )


@site_app.command("start")
def site_start(
    config: ConfigOpt,
    superlink: Annotated[
        str, typer.Option("--superlink", help="SuperLink address HOST:PORT.")
    ],
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    runtime_port: Annotated[
        int,
        typer.Option(help="Local port of the SuperNode's Runtime API (0: any free)."),
    ] = 0,
    max_wait_time: Annotated[
        float | None,
        typer.Option(help="Give up reaching the SuperLink after this many seconds."),
    ] = None,
) -> None:
    """Run the site's SuperNode (TLS, node key) and its app-approving executor."""
    from slidefed.client.config import load_site_config
    from slidefed.deploy.approval import approvals_path, load_approved_apps
    from slidefed.deploy.doctor import clear_node_status, record_node_status
    from slidefed.deploy.site_node import build_site_launch, supervise

    launch = build_site_launch(
        config,
        superlink=superlink,
        ca=ca,
        insecure=insecure,
        runtime_port=runtime_port,
        max_wait_time=max_wait_time,
    )
    if insecure:
        print(_INSECURE_WARNING, file=sys.stderr)
    approvals = approvals_path(config)
    if not load_approved_apps(approvals).app:
        print(
            f"warning: no app approved in {approvals}: every run will be refused; "
            f"approve one with 'slidefed site approve --config {config} --app-dir APP'",
            file=sys.stderr,
        )
    print(
        f"starting site node: SuperLink {superlink}, Runtime API "
        f"127.0.0.1:{launch.runtime_port}, FLWR_HOME {launch.env['FLWR_HOME']}",
        flush=True,
    )
    site = load_site_config(config)
    ended = supervise(
        [launch.supernode, launch.executor],
        launch.env,
        on_connected=lambda: clear_node_status(site),
    )
    record_node_status(site, ended.code, ended.flower_code, ended.cause)
    if ended.cause in _CAUSES:
        print(f"error: {_CAUSES[ended.cause]}", file=sys.stderr)
    raise typer.Exit(ended.code)


@site_app.command("doctor")
def site_doctor(
    config: ConfigOpt,
    superlink: SuperlinkOpt = None,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check data, cache, disk, GPU, certificates, SuperLink, key, approvals, budget."""
    from slidefed.deploy.doctor import render_json, render_text, run_doctor

    report = run_doctor(config, superlink=superlink, ca=ca, insecure=insecure)
    print(render_json(report) if as_json else render_text(report))
    if report.failed:
        raise typer.Exit(1)


@site_app.command("approve")
def site_approve(
    config: ConfigOpt,
    app_dir: Annotated[
        Path | None, typer.Option("--app-dir", help="A Flower app folder.")
    ] = None,
    fab: Annotated[
        Path | None, typer.Option("--fab", help="A built .fab file.")
    ] = None,
    fab_hash: Annotated[
        str | None, typer.Option("--hash", help="A FAB's SHA-256 (64 hex digits).")
    ] = None,
    note: Annotated[str, typer.Option(help="Who approved it and why.")] = "",
) -> None:
    """Approve one app version (by FAB hash) for this site."""
    from slidefed.client.config import load_site_config
    from slidefed.deploy.approval import (
        approvals_path,
        approve_app,
        fab_hash_of_app_dir,
        fab_hash_of_bytes,
    )

    load_site_config(config)
    given = [x for x in (app_dir, fab, fab_hash) if x is not None]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --app-dir DIR, --fab FILE, --hash SHA256"
        )
    name = ""
    if app_dir is not None:
        digest = fab_hash_of_app_dir(app_dir)
        name = app_dir.resolve().name
    elif fab is not None:
        if not fab.is_file():
            raise ConfigError(f"--fab {fab}: no such file")
        digest = fab_hash_of_bytes(fab.read_bytes())
        name = fab.name
    else:
        digest = str(fab_hash)
    path = approvals_path(config)
    approve_app(path, digest, name=name, note=note)
    print(f"approved {digest} ({name or 'by hash'}) in {path}")


__all__ = ["site_app"]
