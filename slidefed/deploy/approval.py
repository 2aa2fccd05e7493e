"""Code approval: a site runs only the app versions (FAB hashes) it has approved.

Where it is enforced, and why there
-----------------------------------
Flower 1.42 has one mechanism of its own, ``flower-supernode --trusted-entities``: the
SuperNode then runs only FABs that carry an Ed25519 signature by a trusted key. Those
signatures are attached by the SuperLink only to apps it downloads from Flower Hub
(``valid_license``); an app sent with ``flwr run ./app`` has none, so every such run
is refused. A federation of hospitals that builds its own app offline cannot use it.

A Flower mod is too late: mods belong to the ``ClientApp`` object, which exists only
after the app's modules were imported, and importing is running the app's code.

So slidefed enforces approval in the site's runtime, before the FAB is even unpacked:

- ``slidefed site start`` runs ``flower-supernode --isolation process`` and, next to
  it, the site's own executor (:func:`run_executor`, ``python -m
  slidefed.deploy.approval executor``): Flower's SuperExec loop, whose launcher starts
  this module's :func:`run_gated_clientapp` for each ClientApp task instead of
  ``flwr-clientapp``.
- :func:`run_gated_clientapp` is Flower's ClientApp process (``run_clientapp``) with
  two hooks. The first sits in front of Flower's FAB installation: it hashes the
  FAB bytes that arrived (SHA-256, the hash ``flwr build`` and the SuperLink use),
  and unless ``approved_apps.toml`` next to ``site.toml`` lists that hash, it audits
  ``app_refused`` and raises :class:`AppNotApproved`. Flower then answers the
  message with an error reply; nothing of the app was unpacked or imported. The
  second wraps the loaded ClientApp in :func:`slidefed.client.egress.egress_guard_mod`,
  so the site's egress guard applies to every approved app as well, whatever mods
  the app itself declares.
- The executor and the SuperNode share a secret (``--superexec-auth-secret-file``),
  so no other local process can take the SuperNode's tasks.

The approval list is read for every message: approving or revoking takes effect
without a restart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slidefed.common.errors import ConfigError, PolicyViolation, SlidefedError

logger = logging.getLogger(__name__)

APPROVALS_FILE = "approved_apps.toml"
"""Name of the approval list, next to ``site.toml``."""

_HEADER = """\
# Apps (Flower FABs) this site runs, by SHA-256 of the FAB. Anything else is refused
# before any of its code runs, and the refusal is written to the site audit log.
# Add one with: slidefed site approve --config site.toml --app-dir DIR (or --fab, --hash)
"""


class AppNotApproved(PolicyViolation):
    """A run's app (FAB) is not on this site's approval list."""


class ApprovedApp(BaseModel):
    """One approved app version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fab_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = ""
    note: str = ""
    approved_at: str = ""


class ApprovedApps(BaseModel):
    """The whole ``approved_apps.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: tuple[ApprovedApp, ...] = ()

    def approves(self, fab_hash: str) -> bool:
        """Whether ``fab_hash`` is on the list.

        Parameters
        ----------
        fab_hash : str
            Full SHA-256 (hex) of a FAB.

        Returns
        -------
        bool
            True when approved.
        """
        return any(a.fab_hash == fab_hash.lower() for a in self.app)


def approvals_path(site_config: Path) -> Path:
    """Where the approval list of the site whose config is ``site_config`` lives.

    Parameters
    ----------
    site_config : Path
        The site's ``site.toml``.

    Returns
    -------
    Path
        ``approved_apps.toml`` in the same folder.
    """
    return Path(site_config).resolve().parent / APPROVALS_FILE


def load_approved_apps(path: Path) -> ApprovedApps:
    """Read an approval list; a missing file approves nothing.

    Parameters
    ----------
    path : Path
        ``approved_apps.toml``.

    Returns
    -------
    ApprovedApps
        The list.

    Raises
    ------
    ConfigError
        If the file is not TOML or an entry breaks a rule.
    """
    if not path.is_file():
        return ApprovedApps()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return ApprovedApps.model_validate(raw)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {key} is invalid: {err['msg']}") from exc
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from exc


def approve_app(
    path: Path, fab_hash: str, *, name: str = "", note: str = ""
) -> ApprovedApps:
    """Add ``fab_hash`` to the approval list (a no-op when it is already there).

    Parameters
    ----------
    path : Path
        ``approved_apps.toml`` (created when missing).
    fab_hash : str
        Full SHA-256 (hex) of the FAB.
    name, note : str
        What the app is and who approved it, for people reading the file.

    Returns
    -------
    ApprovedApps
        The list as written.

    Raises
    ------
    ConfigError
        If ``fab_hash`` is not 64 hex digits or the file is invalid.
    """
    entry = ApprovedApp(
        fab_hash=_check_hash(fab_hash),
        name=name,
        note=note,
        approved_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    current = load_approved_apps(path)
    if current.approves(entry.fab_hash):
        return current
    updated = ApprovedApps(app=(*current.app, entry))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dump(updated), encoding="utf-8")
    tmp.replace(path)
    return updated


def fab_hash_of_bytes(content: bytes) -> str:
    """SHA-256 (hex) of FAB bytes, as the SuperLink and ``flwr build`` compute it.

    Parameters
    ----------
    content : bytes
        The FAB (a zip file).

    Returns
    -------
    str
        64 hex digits.
    """
    return hashlib.sha256(content).hexdigest()


def fab_hash_of_app_dir(app_dir: Path) -> str:
    """The hash of the FAB that ``flwr run APP_DIR`` would send.

    Flower builds FABs deterministically (sorted files, fixed timestamps), so the
    hash of an app folder is known before it is run.

    Parameters
    ----------
    app_dir : Path
        A Flower app folder (with ``pyproject.toml``).

    Returns
    -------
    str
        64 hex digits.

    Raises
    ------
    ConfigError
        If Flower cannot build a FAB from the folder.
    """
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} has no pyproject.toml; give a Flower app folder")
    try:
        return fab_hash_of_bytes(build_fab_from_disk(app_dir))
    except ValueError as exc:
        raise ConfigError(f"{app_dir}: Flower cannot build a FAB: {exc}") from exc


def check_fab(site_config: Path, content: bytes) -> str:
    """Return the FAB's hash if this site approves it; otherwise refuse it.

    Parameters
    ----------
    site_config : Path
        The site's ``site.toml``.
    content : bytes
        The FAB bytes that arrived from the SuperLink.

    Returns
    -------
    str
        The FAB hash.

    Raises
    ------
    AppNotApproved
        If the hash is not in ``approved_apps.toml`` (or the file is unusable).
    """
    fab_hash = fab_hash_of_bytes(content)
    path = approvals_path(site_config)
    try:
        approved = load_approved_apps(path).approves(fab_hash)
    except ConfigError as exc:
        raise AppNotApproved(f"approval list unusable, app refused: {exc}") from exc
    if not approved:
        raise AppNotApproved(
            f"app {fab_hash} is not approved by this site "
            f"(not in {path.name}); refused before any of its code ran"
        )
    return fab_hash


def audit_refusal(
    site_config: Path, fab_hash: str, *, run_id: int | None, **data: Any
) -> None:
    """Write ``app_refused`` to the site audit log; never raises.

    Parameters
    ----------
    site_config : Path
        The site's ``site.toml``.
    fab_hash : str
        The refused FAB's hash.
    run_id : int or None
        Flower run.
    **data : Any
        More JSON-safe facts (FAB id and version).
    """
    from slidefed.client.keys import site_audit_log

    try:
        site_audit_log(site_config).append(
            "app_refused", run_id=run_id, fab_hash=fab_hash, **data
        )
    except SlidefedError as exc:
        logger.error("could not audit the refused app %s: %s", fab_hash, exc)


# --------------------------------------------------------------- gated ClientApp
class _GuardedClientApp:
    """A loaded ClientApp with the site's egress guard in front of its replies."""

    def __init__(self, inner: Callable[[Any, Any], Any]) -> None:
        self._inner = inner

    def __call__(self, message: Any, context: Any) -> Any:
        from slidefed.client.egress import egress_guard_mod

        return egress_guard_mod(message, context, self._inner)


def _install_hooks(site_config: Path) -> None:
    """Put the approval check and the egress guard into Flower's ClientApp process.

    Raises
    ------
    ConfigError
        If this Flower version lacks the hook points (fail closed: no app runs).
    """
    # The module is patched by name: typed as Any, its helpers are not re-exports.
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    names = ("pull_task_input", "install_from_fab", "get_load_client_app_fn")
    missing = [n for n in names if not callable(getattr(rc, n, None))]
    if missing:
        raise ConfigError(
            f"this Flower version has no {missing} in its ClientApp runtime; the site "
            "cannot check apps before they run, so it runs none (install flwr 1.42)"
        )
    pulled: dict[str, Any] = {}
    original_pull = rc.pull_task_input
    original_install = rc.install_from_fab
    original_loader = rc.get_load_client_app_fn

    def pull_task_input(client: Any) -> Any:
        result = original_pull(client)
        pulled["context"], pulled["run"] = result[1], result[2]
        return result

    def install_from_fab(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        content = (
            fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        )
        try:
            check_fab(site_config, content)
        except AppNotApproved as exc:
            run = pulled.get("run")
            context = pulled.get("context")
            fab_hash = fab_hash_of_bytes(content)
            audit_refusal(
                site_config,
                fab_hash,
                run_id=getattr(context, "run_id", None),
                fab_id=str(getattr(run, "fab_id", "")),
                fab_version=str(getattr(run, "fab_version", "")),
                reason="not in approved_apps.toml",
            )
            logger.error("refused app %s: not approved by this site", fab_hash)
            raise AppNotApproved(str(exc)) from None
        return original_install(fab_file, *args, **kwargs)

    def get_load_client_app_fn(*args: Any, **kwargs: Any) -> Any:
        load = original_loader(*args, **kwargs)

        def guarded(*a: Any, **k: Any) -> Any:
            return _GuardedClientApp(load(*a, **k))

        return guarded

    rc.pull_task_input = pull_task_input
    rc.install_from_fab = install_from_fab
    rc.get_load_client_app_fn = get_load_client_app_fn


def run_gated_clientapp(argv: Sequence[str]) -> None:
    """Flower's ClientApp process, with approval and egress checks (see module doc).

    Parameters
    ----------
    argv : sequence of str
        ``--site-config PATH`` and ``flwr-clientapp``'s own arguments.
    """
    from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    parser = argparse.ArgumentParser(prog="slidefed-clientapp")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--site-config", type=Path, required=True)
    add_args_flwr_app_common(parser=parser)
    args = parser.parse_args(list(argv))
    token = try_obtain_flwr_app_token(args)
    _install_hooks(args.site_config)
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(
        runtime_api_address=args.runtime_api_address,
        token=token,
        insecure=args.insecure,
        certificates=validate_and_resolve_root_certificates(
            args.root_certificates, args.insecure
        ),
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


# ---------------------------------------------------------------- the executor
def _gated_executor_class(site_config: Path) -> Any:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import (
        SubprocessExecutor,
    )
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

    class GatedExecutor(SubprocessExecutor):
        """Launches only ClientApps, and only through the gate."""

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            if spec.task_type != TaskType.CLIENT_APP:
                return LaunchResult.failed(
                    f"this site runs ClientApps only, not {spec.task_type}"
                )
            return LaunchResult.accepted() if _spawn(spec) else LaunchResult.failed()

    def _spawn(spec: ExecutionSpec) -> bool:
        import subprocess

        args = [
            sys.executable,
            "-m",
            "slidefed.deploy.approval",
            "clientapp",
            "--site-config",
            str(site_config),
            "--runtime-api-address",
            spec.runtime_api_address,
            "--token",
            spec.token,
        ]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        try:
            subprocess.Popen(args)
        except OSError as exc:
            logger.error("cannot start the ClientApp process: %s", exc.strerror)
            return False
        return True

    return GatedExecutor


def run_executor(argv: Sequence[str]) -> None:
    """The site's SuperExec: Flower's task loop with the gated launcher.

    Parameters
    ----------
    argv : sequence of str
        ``--runtime-api-address HOST:PORT --site-config PATH
        [--superexec-auth-secret-file PATH] [--parent-pid PID]``.
    """
    parser = argparse.ArgumentParser(prog="slidefed-executor")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--site-config", type=Path, required=True)
    parser.add_argument("--superexec-auth-secret-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(list(argv))
    rs: Any = importlib.import_module("flwr.supercore.superexec.run_superexec")
    executor_class = _gated_executor_class(args.site_config.resolve())
    rs.get_executor = lambda *_a, **_k: executor_class()
    secret = None
    if args.superexec_auth_secret_file is not None:
        secret = args.superexec_auth_secret_file.read_bytes()
    rs.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=True,
        superexec_auth_secret=secret,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m slidefed.deploy.approval {executor|clientapp} ...``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    commands = {"executor": run_executor, "clientapp": run_gated_clientapp}
    if not args or args[0] not in commands:
        print(  # noqa: T201 - a process entry point
            "usage: python -m slidefed.deploy.approval {executor|clientapp} ...",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        commands[args[0]](args[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        raise SystemExit(exc.exit_code) from None


def _check_hash(value: str) -> str:
    text = value.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(
            f"{value!r} is not a full FAB hash (64 hex digits); compute it with "
            "'slidefed site approve --app-dir DIR' or 'sha256sum APP.fab'"
        )
    return text


def _dump(apps: ApprovedApps) -> str:
    lines = [_HEADER]
    for entry in apps.app:
        lines.append("[[app]]")
        for key, value in entry.model_dump().items():
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key} = "{escaped}"')
        lines.append("")
    return "\n".join(lines)


__all__ = [
    "APPROVALS_FILE",
    "AppNotApproved",
    "ApprovedApp",
    "ApprovedApps",
    "approvals_path",
    "approve_app",
    "audit_refusal",
    "check_fab",
    "fab_hash_of_app_dir",
    "fab_hash_of_bytes",
    "load_approved_apps",
    "main",
    "run_executor",
    "run_gated_clientapp",
]

if __name__ == "__main__":  # pragma: no cover
    # Import the module by name, so that its classes exist once (not in __main__).
    from slidefed.deploy.approval import main as _main

    _main()
