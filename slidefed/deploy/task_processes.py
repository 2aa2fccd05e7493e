"""Task processes of an executor, reaped as they end (no defunct children).

Flower's ``SubprocessExecutor`` starts each ClientApp or ServerApp process and
drops it: the process stays a zombie under the executor until the next start,
and the last one until the executor ends. :class:`TaskProcesses` keeps each
process it starts and waits for the ended ones whenever the executor's loop
calls ``reconcile()`` (every poll) and when the executor closes.

Two executors use it: the site's gated executor
(:mod:`slidefed.deploy.approval_gate`) and the coordinator's SuperExec. The
SuperLink starts the latter itself, by the name ``flower-superexec``;
:func:`superexec_shim` writes a ``flower-superexec`` that ``server start`` puts
first on the SuperLink's ``PATH``, which runs Flower's SuperExec with
:class:`ReapingExecutor` (``python -m slidefed.deploy.task_processes
superexec ...``, Flower's own arguments).
"""

from __future__ import annotations

import importlib
import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class TaskProcesses:
    """The processes an executor started that have not been reaped yet."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], *, quiet: bool = False) -> bool:
        """Start one task process; False (logged) when it cannot be started.

        Parameters
        ----------
        argv : sequence of str
            The command.
        quiet : bool
            Send its output to ``/dev/null``.

        Returns
        -------
        bool
            Whether the process started.
        """
        self.reap()
        try:
            out = subprocess.DEVNULL if quiet else None
            self._running.append(subprocess.Popen(list(argv), stdout=out, stderr=out))
        except OSError as exc:
            logger.error("cannot start the task process: %s", exc.strerror or exc)
            return False
        return True

    def reap(self) -> int:
        """Wait for every ended process (``poll`` never blocks).

        Returns
        -------
        int
            Processes still running.
        """
        self._running = [p for p in self._running if p.poll() is None]
        return len(self._running)

    @property
    def pids(self) -> list[int]:
        """Process ids of the processes still held (running or not yet reaped)."""
        return [p.pid for p in self._running]


def connection_args(spec: Any) -> list[str]:
    """How a task process reaches its runtime API: TLS roots, parent pid."""
    args: list[str] = []
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        args += ["--parent-pid", str(spec.parent_pid)]
    return args


def _flower_task_command(spec: Any) -> list[str]:
    """The command Flower's ``SubprocessExecutor.launch`` runs for ``spec``."""
    from flwr.supercore.constant import (
        TASK_TYPE_TO_APPIO_API_ADDRESS_ARG,
        TASK_TYPE_TO_COMMAND,
    )

    args = [
        TASK_TYPE_TO_COMMAND[spec.task_type],
        TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
        spec.runtime_api_address,
        "--token",
        spec.token,
    ]
    args += connection_args(spec)
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def reaping_executor_class() -> Any:
    """Flower's ``SubprocessExecutor``, reaping the processes it starts."""
    from flwr.supercore.superexec.executor.subprocess_executor import (
        SubprocessExecutor,
    )
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

    class ReapingExecutor(SubprocessExecutor):
        """Starts task processes as Flower's executor does, and reaps them."""

        def __init__(self) -> None:
            self.children = TaskProcesses()

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            command = _flower_task_command(spec)
            if self.children.start(command, quiet=spec.suppress_output):
                return LaunchResult.accepted()
            return LaunchResult.failed()

        def reconcile(self) -> None:
            self.children.reap()

        def close(self) -> None:
            self.children.reap()

    return ReapingExecutor


SHIM_NAME = "flower-superexec"


def superexec_shim(folder: Path) -> Path:
    """Write ``folder/flower-superexec``, the reaping SuperExec (see module doc).

    Parameters
    ----------
    folder : Path
        Folder to put first on the SuperLink's ``PATH`` (created if missing).

    Returns
    -------
    Path
        ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / SHIM_NAME
    python = shlex.quote(sys.executable)
    script.write_text(
        f'#!/bin/sh\nexec {python} -m slidefed.deploy.task_processes superexec "$@"\n'
    )
    script.chmod(0o755)
    return folder


def run_superexec(argv: Sequence[str]) -> None:
    """Flower's ``flower-superexec`` with :class:`ReapingExecutor` for subprocesses.

    Parameters
    ----------
    argv : sequence of str
        ``flower-superexec``'s own arguments.
    """
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import ExecutorType

    rs: Any = importlib.import_module("flwr.supercore.superexec.run_superexec")
    flower_factory = rs.get_executor
    reaping = reaping_executor_class()

    def get_executor(executor_type: Any, *args: Any, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return reaping()
        return flower_factory(executor_type, *args, **kwargs)

    rs.get_executor = get_executor
    sys.argv = [SHIM_NAME, *argv]
    flower_superexec()


if __name__ == "__main__":
    if sys.argv[1:2] != ["superexec"]:
        sys.exit("usage: python -m slidefed.deploy.task_processes superexec ARGS...")
    run_superexec(sys.argv[2:])


__all__ = [
    "SHIM_NAME",
    "TaskProcesses",
    "connection_args",
    "reaping_executor_class",
    "run_superexec",
    "superexec_shim",
]
