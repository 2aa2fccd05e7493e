"""The code-approval gate: the one module that reaches into Flower's private runtime.

Where approval is enforced, and why there
-----------------------------------------
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
  slidefed.deploy.approval_gate executor``): Flower's SuperExec loop, whose launcher
  starts this module's :func:`run_gated_clientapp` for each ClientApp task instead
  of ``flwr-clientapp``.
- :func:`run_gated_clientapp` is Flower's ClientApp process (``run_clientapp``) with
  two hooks. The first sits in front of Flower's FAB installation: it hashes the
  FAB bytes that arrived (SHA-256, the hash ``flwr build`` and the SuperLink use),
  and unless ``approved_apps.toml`` next to ``site.toml`` lists that hash
  (:func:`slidefed.deploy.approval.check_fab`), it audits ``app_refused`` and raises
  :class:`~slidefed.deploy.approval.AppNotApproved`. Flower then answers the
  message with an error reply; nothing of the app was unpacked or imported. The
  second wraps the loaded ClientApp in :func:`slidefed.client.egress.egress_guard_mod`,
  so the site's egress guard applies to every approved app as well, whatever mods
  the app itself declares. A third sits in front of the reply Flower pushes: an
  error reply that Flower's runtime built itself (its reason is the exception's
  type and text, e.g. of :class:`~slidefed.deploy.approval.AppNotApproved`) leaves
  only as an entry of the site's table of errors
  (:mod:`slidefed.common.site_errors`).
- The executor and the SuperNode share a secret (``--superexec-auth-secret-file``),
  so no other local process can take the SuperNode's tasks.

Tied to one Flower version
--------------------------
The hooks replace four functions of ``flwr.supernode.runtime.run_clientapp``
(``pull_task_input``, ``install_from_fab``, ``get_load_client_app_fn``,
``push_message``) and the
executor factory of ``flwr.supercore.superexec.run_superexec``: private code that
may change in any release. The gate was written and tested for
:data:`FLOWER_SERIES`; on any other installed Flower it fails closed
(:func:`check_flower_version`): the site runs no app at all, and says which version
to install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slidefed.common.errors import ConfigError
from slidefed.common.flower_env import APPROVED_FAB_ENV, quiet_flower_defaults
from slidefed.deploy.approval import (
    AppNotApproved,
    audit_refusal,
    check_fab,
    fab_hash_of_bytes,
)

logger = logging.getLogger(__name__)

FLOWER_SERIES = "1.42"
"""The Flower release series (``1.42.x``) whose private runtime the gate patches."""

ENTRY_MODULE = "slidefed.deploy.approval_gate"
"""``python -m`` target of the site's executor and of each gated ClientApp."""

_HOOKED = (
    "pull_task_input",
    "install_from_fab",
    "get_load_client_app_fn",
    "push_message",
)


def installed_flower_version() -> str:
    """The version of the installed ``flwr`` distribution (``""`` when absent).

    Returns
    -------
    str
        E.g. ``"1.42.0"``.
    """
    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        return ""


def check_flower_version() -> str:
    """Fail closed unless the installed Flower is the series the gate was written for.

    Returns
    -------
    str
        The installed version.

    Raises
    ------
    ConfigError
        If the installed ``flwr`` is not ``1.42.x``: the message names both
        versions and the fix, and the site runs no app.
    """
    installed = installed_flower_version()
    if installed.split(".")[:2] == FLOWER_SERIES.split("."):
        return installed
    raise ConfigError(
        f"flwr {installed or '(not installed)'} is installed, but the site's "
        f"code-approval gate was written for flwr {FLOWER_SERIES}.x; the site runs "
        f"no app until you install it: pip install 'flwr[simulation]=={FLOWER_SERIES}.*'"
    )


# --------------------------------------------------------------- gated ClientApp
class _GuardedClientApp:
    """A loaded ClientApp with the site's egress guard in front of its replies."""

    def __init__(self, inner: Callable[[Any, Any], Any]) -> None:
        self._inner = inner

    def __call__(self, message: Any, context: Any) -> Any:
        from slidefed.client.egress import egress_guard_mod

        return egress_guard_mod(message, context, self._inner)


def _table_error(reply: Any, pulled: dict[str, Any]) -> Any:
    """``reply`` with any error not in the site's table replaced by a table entry.

    Flower's runtime answers an exception raised outside the app (the approval
    check, installing or loading the FAB) with its type and text; that text stays
    in the site log. A refused app is answered with ``APP_NOT_APPROVED``, any
    other such error with ``APP_NOT_STARTED``.
    """
    from flwr.app import Error

    from slidefed.common.site_errors import (
        SiteError,
        is_site_error,
        site_error_message,
    )

    if reply is None or not reply.has_error():
        return reply
    if is_site_error(reply.error.code, reply.error.reason):
        return reply
    code = (
        SiteError.APP_NOT_APPROVED
        if pulled.get("refused")
        else SiteError.APP_NOT_STARTED
    )
    logger.error(
        "Flower's runtime answered with error %s; sent as site error %d instead",
        reply.error.code,
        code,
    )
    reply.error = Error(code=int(code), reason=site_error_message(code))
    return reply


def _refuse(site_config: Path, content: bytes, pulled: dict[str, Any]) -> None:
    """Audit ``app_refused`` for FAB bytes that failed :func:`check_fab`."""
    run, context = pulled.get("run"), pulled.get("context")
    fab_hash = fab_hash_of_bytes(content)
    audit_refusal(
        site_config,
        fab_hash,
        run_id=getattr(context, "run_id", None),
        fab_id=str(getattr(run, "fab_id", "")),
        fab_version=str(getattr(run, "fab_version", "")),
        reason="not in approved_apps.toml",
    )
    pulled["refused"] = True
    logger.error("refused app %s: not approved by this site", fab_hash)


def _install_hooks(site_config: Path) -> None:
    """Put the approval check and the egress guard into Flower's ClientApp process.

    Raises
    ------
    ConfigError
        If this Flower version is not the one the gate was written for, or lacks
        the hook points (fail closed: no app runs).
    """
    check_flower_version()
    # The module is patched by name: typed as Any, its helpers are not re-exports.
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    missing = [n for n in _HOOKED if not callable(getattr(rc, n, None))]
    if missing:
        raise ConfigError(
            f"this Flower version has no {missing} in its ClientApp runtime; the site "
            "cannot check apps before they run, so it runs none (install flwr 1.42)"
        )
    pulled: dict[str, Any] = {}
    original_pull = rc.pull_task_input
    original_install = rc.install_from_fab
    original_loader = rc.get_load_client_app_fn
    original_push = rc.push_message

    def pull_task_input(client: Any) -> Any:
        result = original_pull(client)
        pulled["context"], pulled["run"] = result[1], result[2]
        return result

    def install_from_fab(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        content = (
            fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        )
        try:
            approved = check_fab(site_config, content)
        except AppNotApproved as exc:
            _refuse(site_config, content, pulled)
            raise AppNotApproved(str(exc)) from None
        # The ClientApp runs in this process: it audits the hash it runs under.
        os.environ[APPROVED_FAB_ENV] = approved
        return original_install(fab_file, *args, **kwargs)

    def get_load_client_app_fn(*args: Any, **kwargs: Any) -> Any:
        load = original_loader(*args, **kwargs)

        def guarded(*a: Any, **k: Any) -> Any:
            return _GuardedClientApp(load(*a, **k))

        return guarded

    def push_message(client: Any, message: Any, context: Any) -> Any:
        return original_push(client, _table_error(message, pulled), context)

    rc.pull_task_input = pull_task_input
    rc.install_from_fab = install_from_fab
    rc.get_load_client_app_fn = get_load_client_app_fn
    rc.push_message = push_message


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
def _clientapp_command(site_config: Path, spec: Any) -> list[str]:
    """The gated ClientApp process for one task of Flower's executor."""
    args = [
        sys.executable,
        "-m",
        ENTRY_MODULE,
        "clientapp",
        "--site-config",
        str(site_config),
        "--runtime-api-address",
        spec.runtime_api_address,
        "--token",
        spec.token,
    ]
    from slidefed.deploy.task_processes import connection_args

    args += connection_args(spec)
    return args


def _gated_executor_class(site_config: Path) -> Any:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import (
        SubprocessExecutor,
    )
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

    from slidefed.deploy.task_processes import TaskProcesses

    class GatedExecutor(SubprocessExecutor):
        """Launches only ClientApps, and only through the gate; reaps them."""

        def __init__(self) -> None:
            self.children = TaskProcesses()

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            if spec.task_type != TaskType.CLIENT_APP:
                return LaunchResult.failed(
                    f"this site runs ClientApps only, not {spec.task_type}"
                )
            started = self.children.start(_clientapp_command(site_config, spec))
            return LaunchResult.accepted() if started else LaunchResult.failed()

        def reconcile(self) -> None:
            # Called on every poll of the task loop: no ClientApp stays defunct.
            self.children.reap()

        def close(self) -> None:
            self.children.reap()

    return GatedExecutor


def run_executor(argv: Sequence[str]) -> None:
    """The site's SuperExec: Flower's task loop with the gated launcher.

    Parameters
    ----------
    argv : sequence of str
        ``--runtime-api-address HOST:PORT --site-config PATH
        [--superexec-auth-secret-file PATH] [--parent-pid PID]``.

    Raises
    ------
    ConfigError
        If the installed Flower is not the one the gate was written for.
    """
    parser = argparse.ArgumentParser(prog="slidefed-executor")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--site-config", type=Path, required=True)
    parser.add_argument("--superexec-auth-secret-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(list(argv))
    check_flower_version()
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
    """``python -m slidefed.deploy.approval_gate {executor|clientapp} ...``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_flower_defaults(os.environ)
    commands = {"executor": run_executor, "clientapp": run_gated_clientapp}
    if not args or args[0] not in commands:
        print(  # noqa: T201 - a process entry point
            f"usage: python -m {ENTRY_MODULE} {{executor|clientapp}} ...",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        commands[args[0]](args[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        raise SystemExit(exc.exit_code) from None


__all__ = [
    "ENTRY_MODULE",
    "FLOWER_SERIES",
    "check_flower_version",
    "installed_flower_version",
    "main",
    "run_executor",
    "run_gated_clientapp",
]

if __name__ == "__main__":  # pragma: no cover
    # Import the module by name, so that its classes exist once (not in __main__).
    from slidefed.deploy.approval_gate import main as _main

    _main()
