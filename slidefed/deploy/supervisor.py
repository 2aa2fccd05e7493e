"""A small supervisor: run a site's processes side by side until one ends.

If either process ends, the other is stopped and the supervisor returns the first
one's exit code. Flower's own reason (``Exit Code: 305``: the SuperLink was not
reached, or refused the node key) is read from the first process's output.
Every process's output is passed through, line by line; when this process's
standard output is not a terminal (a log file, ``docker logs``), the colour
codes Flower writes regardless are taken out. SIGINT/SIGTERM/SIGHUP are forwarded
to every process.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pydantic import BaseModel, ConfigDict

SUPERNODE_EXIT_AUTH = 305
"""Flower's exit code when the SuperNode cannot activate with the SuperLink.

The process itself exits with 1; Flower writes this code in its last log lines."""

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Flower colours its log levels whatever the output is (CSI sequences).
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

_CAUSES = (
    ("[code: 2004]", "not_registered"),
    ("No SuperNode found with the given public key", "not_registered"),
    ("CERTIFICATE_VERIFY_FAILED", "tls_untrusted"),
    ("SSL/TLS handshake error", "tls_untrusted"),
)


class SupervisedExit(BaseModel):
    """How a supervised site ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: int
    flower_code: int | None = None
    cause: str = ""


class _Watcher:
    """Copies the first process's output through and notes Flower's exit reason."""

    def __init__(self, on_connected: Callable[[], None] | None = None) -> None:
        self.flower_code: int | None = None
        self.cause = ""
        self._on_connected = on_connected
        self._lock = threading.Lock()
        try:
            self._plain = not sys.stdout.isatty()
        except (AttributeError, ValueError):
            self._plain = True

    def pump(self, stream: Any, *, watch: bool = True) -> None:
        """Copy ``stream`` through; read it for Flower's exit reason if ``watch``."""
        # The stream closes under this thread when the supervisor stops.
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(stream.readline, b""):
                line = _ANSI.sub(b"", raw) if self._plain else raw
                with self._lock, contextlib.suppress(OSError, ValueError):
                    sys.stdout.buffer.write(line)
                    sys.stdout.buffer.flush()
                if watch:
                    self._read(_ANSI.sub(b"", raw).decode("utf-8", errors="replace"))

    def _read(self, line: str) -> None:
        if "SuperNode ID:" in line and self._on_connected is not None:
            with contextlib.suppress(OSError):
                self._on_connected()
            self._on_connected = None
        found = re.search(r"Exit Code: (\d+)", line)
        if found:
            self.flower_code = int(found.group(1))
        for needle, cause in _CAUSES:
            if needle in line and not self.cause:
                self.cause = cause


def supervise(
    commands: list[list[str]],
    env: dict[str, str],
    *,
    grace: float = 10.0,
    on_connected: Callable[[], None] | None = None,
) -> SupervisedExit:
    """Run ``commands`` side by side until one ends; then stop the others.

    The first command's output is passed through and read for Flower's exit
    reason (``Exit Code: 305`` and why).

    Parameters
    ----------
    commands : list of list of str
        The processes, started in order (the first one's exit code wins ties).
    env : dict of str to str
        Their environment.
    grace : float
        Seconds between SIGTERM and SIGKILL when stopping.
    on_connected : callable, optional
        Called once when the SuperNode reports its node id (it was accepted).

    Returns
    -------
    SupervisedExit
        Exit code of the process that ended first (128 + signal number when a
        forwarded signal stopped the site), Flower's own exit code and its cause
        (``not_registered``, ``tls_untrusted``) when the output named them.
    """
    procs: list[subprocess.Popen[bytes]] = []
    received: list[int] = []
    watcher = _Watcher(on_connected)
    pumps: list[threading.Thread] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        _start(commands, env, watcher, procs, pumps)
        code = _wait_first(procs)
    finally:
        _stop_all(procs, grace)
        for pump in pumps:
            pump.join(timeout=5)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        code = 128 + received[0]
    return SupervisedExit(
        code=code, flower_code=watcher.flower_code, cause=watcher.cause
    )


def _start(
    commands: list[list[str]],
    env: dict[str, str],
    watcher: _Watcher,
    procs: list[subprocess.Popen[bytes]],
    pumps: list[threading.Thread],
) -> None:
    """Start the processes into ``procs`` (filled as they start, for ``forward``)."""
    for command in commands:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        first = not procs
        procs.append(proc)
        pump = threading.Thread(
            target=watcher.pump,
            args=(proc.stdout,),
            kwargs={"watch": first},
            daemon=True,
        )
        pumps.append(pump)
        pump.start()
        if first:
            # The SuperNode must be listening before the executor dials it.
            time.sleep(0.5)


def _wait_first(procs: list[subprocess.Popen[bytes]]) -> int:
    while True:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                return code
        time.sleep(0.2)


def _stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


__all__ = ["SUPERNODE_EXIT_AUTH", "SupervisedExit", "supervise"]
