"""``slidefed audit ...``: commands for compliance auditors (no torch needed).

Only the standard library, typer, pydantic and ``cryptography`` load here, so that an
auditor's install needs neither torch nor a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slidefed.common.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LogsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Audit logs: the sites' audit.jsonl and, to cross-check, the server's "
        "server-audit.jsonl."
    ),
]
KeysOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder of trusted *.pub audit keys (default: the key beside each log)."
    ),
]
EverySigOpt = Annotated[
    bool,
    typer.Option(
        "--every-signature",
        help="Check each record's own signature even where the signed head "
        "vouches for it (slower).",
    ),
]

audit_app = typer.Typer(
    help="Verify and read audit logs.", no_args_is_help=True, rich_markup_mode=None
)


_UNPINNED = """\
WARNING: no --keys given: signatures were checked against the audit_key.pub found
WARNING: beside each log. Whoever can edit a log can replace that key too, so this
WARNING: does not prove who wrote the logs. Pass --keys DIR, a folder with the
WARNING: audit_key.pub of 'slidefed server init' and of each site's 'site init'."""


def _trusted_keys(keys: Path | None) -> dict[str, Ed25519PublicKey] | None:
    from slidefed.audit.load import load_public_keys

    if keys is None:
        print(_UNPINNED, file=sys.stderr, flush=True)
        return None
    return load_public_keys(keys)


def _check_paths(logs: list[Path]) -> None:
    if not logs:
        raise ConfigError("give at least one audit log (audit.jsonl)")
    seen: set[Path] = set()
    for path in logs:
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such audit log; pass the path of audit.jsonl "
                "(sites) or server-audit.jsonl (server)"
            )
        if path.resolve() in seen:
            raise ConfigError(f"{path} is given twice; pass each audit log once")
        seen.add(path.resolve())


# ------------------------------------------------------------------------- verify
@audit_app.command("verify")
def audit_verify(
    logs: LogsArg,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
    every_signature: EverySigOpt = False,
) -> None:
    """Check chains, signatures and budgets; exit 1 naming the first bad record.

    Given a server log too, every update it aggregated must match a site release.
    """
    from slidefed.audit.check import check_logs

    _check_paths(logs)
    trusted = _trusted_keys(keys)
    result = check_logs(logs, public_keys=trusted, every_signature=every_signature)
    print(result.model_dump_json(indent=2) if as_json else result.summary())
    if not result.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------- report
@audit_app.command("report")
def audit_report(
    logs: LogsArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="HTML file to write.")
    ] = Path("audit-report.html"),
    keys: KeysOpt = None,
    every_signature: EverySigOpt = False,
) -> None:
    """Write one self-contained HTML page: epsilon per site, releases, refusals.

    Exit 1 when a log fails verification (the report is written and says why).
    """
    from slidefed.audit.check import summarise
    from slidefed.audit.load import load_logs
    from slidefed.audit.report import write_report
    from slidefed.audit.verify import collector_paused

    _check_paths(logs)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name like report.html")
    trusted = _trusted_keys(keys)
    with collector_paused():
        loaded = load_logs(logs, public_keys=trusted, every_signature=every_signature)
        result = summarise(loaded)
        write_report(loaded, out, check=result, trusted_keys=trusted is not None)
    print(f"report written to {out}")
    if result.first_problem is not None:
        print(f"FAILED: first bad record {result.first_problem.summary()}")
        raise typer.Exit(1)
