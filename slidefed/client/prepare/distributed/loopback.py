"""A small Ray cluster on 127.0.0.1, made with ``ray start``, for tests and benchmarks.

Each node is a ``ray start --block`` process in a session of its own, with
free ports and a temporary folder of its own cluster; :meth:`LoopbackCluster
.close` ends exactly these process groups (never ``ray stop``, which would end
every Ray on the machine). A hospital starts its real cluster the same way, one
``ray start`` per node (see docs/site-guide.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from slidefed.common.errors import ConfigError

logger = logging.getLogger(__name__)

#: Seconds to wait for a node to join.
START_TIMEOUT = 120.0
#: Bytes of object store per node (Ray's minimum is about 75 MB).
OBJECT_STORE_BYTES = 100_000_000


_COUNT_NODES = (
    "import logging, sys, ray; "
    "ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR); "
    "print(sum(bool(n.get('Alive')) for n in ray.nodes()))"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_bin() -> str:
    beside = Path(sys.executable).parent / "ray"  # the venv's, when not on PATH
    found = shutil.which("ray") or (str(beside) if beside.is_file() else None)
    if found is None:
        msg = (
            "the 'ray' command is not on PATH; install the site extra (slidefed[site])"
        )
        raise ConfigError(msg)
    return found


class LoopbackCluster:
    """A head node and worker nodes on 127.0.0.1.

    Parameters
    ----------
    head_cpus : int
        CPUs the head node offers to tasks (0: it only coordinates).
    env : dict, optional
        Environment of the nodes (default: this process's); their worker
        processes must import the same slidefed.
    """

    def __init__(
        self, *, head_cpus: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # A short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="sfray", dir="/tmp"))
        self.nodes: list[subprocess.Popen[bytes]] = []
        self._start(["--head", f"--port={self.port}", f"--num-cpus={head_cpus}"])

    def _common(self) -> list[str]:
        return [
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
        ]

    def _start(self, args: list[str]) -> None:
        extra = []
        if "--head" in args:
            extra = [
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir}",
            ]
        log = (self.temp_dir / f"node{len(self.nodes)}.log").open("wb")
        proc = subprocess.Popen(
            [_ray_bin(), "start", *args, *self._common(), *extra],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.nodes.append(proc)

    def add_node(self, *, cpus: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Start one more node with ``cpus`` CPUs, joined to the head.

        Waits first for the head to listen: a node that finds no head gives up.
        """
        self._wait_for_head(time.monotonic() + timeout)
        self._start([f"--address={self.address}", f"--num-cpus={cpus}"])

    def wait(self, *, nodes: int | None = None, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``nodes`` (default: all started) nodes are alive.

        Raises
        ------
        RuntimeError
            If they are not alive within ``timeout`` seconds, or a node exited.
        """
        want = len(self.nodes) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        self._wait_for_head(deadline)
        while self._alive_nodes(deadline) < want:
            self._check_running()
            self._sleep_until(deadline, f"{want} Ray nodes")

    def _alive_nodes(self, deadline: float) -> int:
        """Nodes the head counts alive, asked from a child process.

        A driver that joins a head which then dies retries for minutes; in a
        child process with a time limit, that cannot hang this one.
        """
        try:
            done = subprocess.run(  # our own interpreter and code
                [sys.executable, "-c", _COUNT_NODES, self.address],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return 0
        lines = done.stdout.split()
        return int(lines[-1]) if done.returncode == 0 and lines else 0

    def _wait_for_head(self, deadline: float) -> None:
        while True:
            self._check_running()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                self._sleep_until(deadline, "the head node to listen")
            else:
                return

    def _sleep_until(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}; see the logs in {self.temp_dir}"
            raise RuntimeError(msg)
        time.sleep(0.5)

    def _check_running(self) -> None:
        for i, proc in enumerate(self.nodes):
            if proc.poll() is not None:
                log = self.temp_dir / f"node{i}.log"
                tail = log.read_text(errors="replace").splitlines()[-5:]
                msg = f"Ray node {i} exited ({proc.returncode}): " + " | ".join(tail)
                raise RuntimeError(msg)

    def node_processes(self, index: int) -> dict[int, str]:
        """Process ids and titles of the processes of node ``index`` (its group)."""
        pgid = self.nodes[index].pid
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != pgid:
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, ProcessLookupError):
                continue
            found[int(entry.name)] = title.decode(errors="replace").strip()
        return found

    def busy_workers(self, index: int) -> list[int]:
        """Worker processes of node ``index`` running a preparation task now."""
        titles = ("ray::start_slide", "ray::read_region")
        return [
            pid
            for pid, title in self.node_processes(index).items()
            if title.startswith(titles)
        ]

    def close(self) -> None:
        """End every node's process group; remove the temporary folder."""
        for proc in self.nodes:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for proc in self.nodes:
            self._signal(proc, signal.SIGKILL)
            proc.wait()
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    @classmethod
    def started(
        cls,
        *,
        head_cpus: int = 1,
        workers: int = 1,
        env: dict[str, str] | None = None,
        attempts: int = 3,
    ) -> LoopbackCluster:
        """A cluster with ``workers`` more nodes of one CPU, all alive.

        On a loaded machine Ray gives a node 30 s to register and then gives
        up; the whole cluster is then started again, up to ``attempts`` times.

        Raises
        ------
        RuntimeError
            If the last attempt fails too.
        """
        for attempt in range(1, attempts + 1):
            cluster = cls(head_cpus=head_cpus, env=env)
            try:
                for _ in range(workers):
                    cluster.add_node(cpus=1)
                cluster.wait()
            except RuntimeError as exc:
                cluster.close()
                if attempt == attempts:
                    raise
                logger.warning("Ray cluster did not start (%s); again", exc)
            else:
                return cluster
        msg = "attempts must be at least 1"
        raise ValueError(msg)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["LoopbackCluster", "free_port"]
