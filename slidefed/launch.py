"""Launch a run on a real federation with ``flwr run`` and wait for its real outcome.

``flwr run`` exits 0 even when the run fails, so slidefed submits the run, then
polls ``flwr ls --run-id`` until the run has finished, and fails unless its status
is ``finished:completed``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from slidefed.common.errors import ConfigError, FederationError
from slidefed.common.flower_env import flower_env

logger = logging.getLogger(__name__)

COMPLETED = "finished:completed"


def _json_object(text: str) -> dict[str, Any]:
    """The last JSON object printed in ``text`` (flwr may print log lines too)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    start = text.find("{")
    if start >= 0:
        try:
            value = json.loads(text[start:])
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
    raise FederationError(f"flwr printed no JSON result: {text.strip()[-300:]!r}")


def parse_run_id(stdout: str) -> int:
    """Run id from ``flwr run --format json``."""
    result = _json_object(stdout)
    if not result.get("success") or result.get("run-id") is None:
        raise FederationError(f"flwr run did not start a run: {result}")
    return int(result["run-id"])


def parse_status(stdout: str, run_id: int) -> tuple[str, str]:
    """(status, details) of ``run_id`` from ``flwr ls --run-id --format json``."""
    result = _json_object(stdout)
    for run in result.get("runs", []):
        if int(run.get("run-id", -1)) == run_id:
            return str(run.get("status", "")), str(run.get("status-details", ""))
    raise FederationError(f"run {run_id} not listed by the SuperLink: {result}")


def _flwr(args: list[str], env: dict[str, str]) -> str:
    exe = shutil.which("flwr")
    if exe is None:
        raise ConfigError("the 'flwr' command is not on PATH; activate slidefed's venv")
    # flwr reads a connection name that is also a folder of the current directory
    # as an app path ("./slidefed"): run it from an empty folder of its own.
    with tempfile.TemporaryDirectory(prefix="slidefed-flwr-") as empty:
        proc = subprocess.run(
            [exe, *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
            cwd=empty,
        )
    return proc.stdout + "\n" + proc.stderr


def launch(
    app_dir: Path,
    connection: str,
    *,
    run_config: str = "",
    timeout: float = 24 * 3600,
    poll: float = 2.0,
) -> int:
    """Submit a run and wait until it finishes; return its id.

    Raises
    ------
    FederationError
        If the run could not start, did not complete, or ran past ``timeout``.
    """
    env = flower_env()
    args = ["run", str(app_dir.resolve()), connection, "--format", "json"]
    if run_config:
        args += ["--run-config", run_config]
    run_id = parse_run_id(_flwr(args, env))
    logger.info("run %d submitted; waiting for it to finish", run_id)
    deadline = time.monotonic() + timeout
    while True:
        status, details = parse_status(
            _flwr(["ls", connection, "--run-id", str(run_id), "--format", "json"], env),
            run_id,
        )
        if status.startswith("finished"):
            break
        if time.monotonic() > deadline:
            raise FederationError(f"run {run_id} still {status} after {timeout:.0f} s")
        time.sleep(poll)
    if status != COMPLETED:
        raise FederationError(
            f"run {run_id} ended {status}: {details or 'no details'}; "
            f"see 'flwr log {run_id} {connection} --show'"
        )
    return run_id


__all__ = ["COMPLETED", "launch", "parse_run_id", "parse_status"]
