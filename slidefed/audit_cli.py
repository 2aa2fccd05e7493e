"""``slidefed audit ...``: commands for compliance auditors (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slidefed.common.errors import ConfigError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path of site.toml.")]

audit_app = typer.Typer(
    help="Verify and read audit logs.", no_args_is_help=True, rich_markup_mode=None
)


# -------------------------------------------------------------------------- audit
@audit_app.command("verify")
def audit_verify(
    logs: Annotated[list[Path], typer.Argument(help="Audit logs (audit.jsonl).")],
    keys: Annotated[
        Path | None,
        typer.Option(
            help="Folder of trusted *.pub audit keys (default: the key beside each log)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check hash chains and signatures; exit 1 naming the first bad record."""
    from slidefed.common.audit import verify_log
    from slidefed.common.crypto import key_id, load_public_key

    trusted = None
    if keys is not None:
        if not keys.is_dir():
            raise ConfigError(f"--keys {keys} is not a folder of *.pub files")
        trusted = {
            key_id(k): k for k in map(load_public_key, sorted(keys.glob("*.pub")))
        }
    for path in logs:
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such audit log; pass the path of audit.jsonl"
            )
    results = [verify_log(p, public_keys=trusted) for p in logs]
    if as_json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                print(f"{r.path}: OK, {r.records} records")
            for pr in r.problems[:1]:
                print(f"{r.path}:{pr.line}: {pr.kind}: {pr.message}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
