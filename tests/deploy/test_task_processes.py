"""No defunct children under the site's executor or the coordinator's SuperExec."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slidefed.deploy import approval_gate, task_processes
from slidefed.deploy.task_processes import superexec_shim


def zombies_of(parent: int) -> set[int]:
    """Children of ``parent`` that ended and were not waited for (``/proc``)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if int(ppid) == parent and state == "Z":
            found.add(int(stat.parent.name))
    return found


def _spec() -> Any:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    return ExecutionSpec(
        task_type=TaskType.CLIENT_APP,
        runtime_api_address="127.0.0.1:1",
        token="t",  # noqa: S106 - a placeholder, nothing listens
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=1,
    )


def _ended(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until every pid is a zombie (ended, not reaped)."""
    deadline = time.monotonic() + timeout
    while not set(pids) <= zombies_of(os.getpid()):
        assert time.monotonic() < deadline, "task processes did not end"
        time.sleep(0.05)


def test_the_site_executor_reaps_its_clientapp_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = [sys.executable, "-c", "pass"]
    monkeypatch.setattr(approval_gate, "_clientapp_command", lambda *_: quick)
    executor = approval_gate._gated_executor_class(tmp_path / "site.toml")()
    for _ in range(3):
        assert executor.launch(_spec()).status == "accepted"
    pids = executor.children.pids
    _ended(pids)  # ended: defunct until the executor's loop polls
    executor.reconcile()
    assert not set(pids) & zombies_of(os.getpid())
    assert executor.children.pids == []


def test_the_coordinator_superexec_reaps_its_serverapp_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quick = [sys.executable, "-c", "pass"]
    monkeypatch.setattr(task_processes, "_flower_task_command", lambda _: quick)
    executor = task_processes.reaping_executor_class()()
    assert executor.launch(_spec()).status == "accepted"
    pids = executor.children.pids
    _ended(pids)
    executor.close()
    assert not set(pids) & zombies_of(os.getpid())


def test_the_superexec_shim_runs_flowers_superexec(tmp_path: Path) -> None:
    folder = superexec_shim(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    # By name, as the SuperLink starts it.
    done = subprocess.run(
        ["flower-superexec", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--runtime-api-address" in done.stdout


@pytest.mark.parametrize("insecure", [True, False])
def test_the_reaping_superexec_starts_what_flowers_would(
    monkeypatch: pytest.MonkeyPatch, insecure: bool
) -> None:
    from dataclasses import replace

    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor

    spec = replace(
        _spec(),
        task_type=TaskType.SERVER_APP,
        insecure=insecure,
        root_certificates_path=None if insecure else "/pki/ca.crt",
        parent_pid=4242,
        suppress_output=False,
    )
    started: list[list[str]] = []

    class Recorder:
        def __init__(self, args: list[str], **_: Any) -> None:
            started.append(list(args))

    popen_home = subprocess_executor.subprocess  # type: ignore[attr-defined]
    monkeypatch.setattr(popen_home, "Popen", Recorder)
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert task_processes._flower_task_command(spec) == started[0]
