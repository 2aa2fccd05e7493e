"""Launch a run on a real federation with ``flwr run`` and wait for its real outcome.

``flwr run`` exits 0 even when the run fails, so slidefed submits the run, then
polls ``flwr ls --run-id`` until the run has finished, and fails unless its status
is ``finished:completed``. While it waits, it follows the run's log
(``flwr log RUN_ID CONNECTION --stream``) and hands each of the ServerApp's
per-round lines (:mod:`slidefed.common.progress_line`) to the caller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slidefed.common.errors import ConfigError, FederationError
from slidefed.common.flower_env import flower_env
from slidefed.common.progress_line import parse_round_line

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
        raise FederationError(f"flwr run did not start a run: {_start_error(result)}")
    return int(result["run-id"])


def _start_error(result: dict[str, Any]) -> str:
    """Flower's reason in one line, without its warnings about the app's metadata."""
    text = str(result.get("error-message") or result)
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.strip().startswith(("- Recommended property", "Flower App config"))
    ]
    reason = "; ".join(lines)[-600:]
    if "403" in reason and "/control/" in reason:
        reason += (
            " (the coordinator's public port serves only the Fleet API for sites; "
            "launch against the Control API: on the coordinator host, or through an "
            "SSH tunnel to its 127.0.0.1 SuperLink port, see docs/deployment.md)"
        )
    return reason


def parse_status(stdout: str, run_id: int) -> tuple[str, str]:
    """(status, details) of ``run_id`` from ``flwr ls --run-id --format json``."""
    result = _json_object(stdout)
    for run in result.get("runs", []):
        if int(run.get("run-id", -1)) == run_id:
            return str(run.get("status", "")), str(run.get("status-details", ""))
    raise FederationError(f"run {run_id} not listed by the SuperLink: {result}")


def _flwr_exe() -> str:
    exe = shutil.which("flwr")
    if exe is None:
        raise ConfigError("the 'flwr' command is not on PATH; activate slidefed's venv")
    return exe


def _flwr(args: list[str], env: dict[str, str]) -> str:
    exe = _flwr_exe()
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


@contextlib.contextmanager
def _round_lines(
    run_id: int,
    connection: str,
    env: dict[str, str],
    on_round: Callable[[str], None] | None,
) -> Iterator[None]:
    """Follow ``flwr log RUN_ID CONNECTION --stream``; pass each per-round line on.

    The stream ends by itself when the run finishes; it is given a few seconds to
    deliver the last lines, then stopped. A stream that fails only costs the
    progress lines: the run's status is polled apart from it.
    """
    if on_round is None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="slidefed-flwr-") as empty:
        proc = subprocess.Popen(
            [_flwr_exe(), "log", str(run_id), connection, "--stream"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=empty,
        )
        reader = threading.Thread(
            target=_pass_round_lines, args=(proc, on_round), daemon=True
        )
        reader.start()
        try:
            yield
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


def _pass_round_lines(
    proc: subprocess.Popen[str], on_round: Callable[[str], None]
) -> None:
    """Read the log stream; call ``on_round`` once per distinct per-round line."""
    seen: set[str] = set()
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
    for line in proc.stdout:
        text = parse_round_line(line)
        if text is not None and text not in seen:
            seen.add(text)
            on_round(text)


def launch(
    app_dir: Path,
    connection: str,
    *,
    run_config: str = "",
    timeout: float = 24 * 3600,
    poll: float = 2.0,
    on_round: Callable[[str], None] | None = None,
) -> int:
    """Submit a run and wait until it finishes; return its id.

    Parameters
    ----------
    app_dir : Path
        The app folder (``slidefed app build``).
    connection : str
        The SuperLink connection's name.
    run_config : str
        ``--run-config`` overrides.
    timeout : float
        Seconds to wait for the run to finish.
    poll : float
        Seconds between two status queries.
    on_round : callable, optional
        Called with each round's progress line from the run's log.

    Returns
    -------
    int
        The run's id.

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
    with _round_lines(run_id, connection, env, on_round):
        status, details = _wait_finished(run_id, connection, env, timeout, poll)
    if status != COMPLETED:
        raise FederationError(
            f"run {run_id} ended {status}: {details or 'no details'}; "
            f"see 'flwr log {run_id} {connection} --show'"
        )
    return run_id


def _wait_finished(
    run_id: int, connection: str, env: dict[str, str], timeout: float, poll: float
) -> tuple[str, str]:
    """Poll ``flwr ls`` until the run has finished; its status and details."""
    deadline = time.monotonic() + timeout
    while True:
        status, details = parse_status(
            _flwr(["ls", connection, "--run-id", str(run_id), "--format", "json"], env),
            run_id,
        )
        if status.startswith("finished"):
            return status, details
        if time.monotonic() > deadline:
            raise FederationError(f"run {run_id} still {status} after {timeout:.0f} s")
        time.sleep(poll)


__all__ = ["COMPLETED", "launch", "parse_run_id", "parse_status"]
