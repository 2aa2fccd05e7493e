"""A local Orthanc DICOM server with its DICOMweb plugin, for tests and benchmarks.

Orthanc (Debian: ``apt-get install orthanc orthanc-dicomweb``) runs here as a
plain process with a JSON configuration, listening on 127.0.0.1 only, on a free
port, with its database in a folder of the caller's. Slides are stored through
its REST API (``POST /instances``), as an archive would receive them. Nothing
here is used by a site: a hospital points ``[dicomweb] url`` at its own archive.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from slidefed.common.errors import ConfigError

#: Where Debian's orthanc-dicomweb package puts the plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    """The ``Orthanc`` executable, or None when it is not installed."""
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None
    )


def orthanc_available() -> bool:
    """Whether Orthanc and its DICOMweb plugin are installed."""
    return orthanc_binary() is not None and DICOMWEB_PLUGIN.is_file()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """An Orthanc process on 127.0.0.1 serving DICOMweb at :attr:`url`.

    Parameters
    ----------
    root : Path
        Folder for the configuration, the database and the log.
    users : dict of str to str, optional
        HTTP basic-auth users (name: password); none means no authentication.
    port : int, optional
        HTTP port (default: a free one). A restarted server keeps its port
        and its stored instances.
    """

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        binary = orthanc_binary()
        if binary is None or not DICOMWEB_PLUGIN.is_file():
            raise ConfigError(
                "Orthanc with its DICOMweb plugin is not installed; run "
                "'apt-get install orthanc orthanc-dicomweb'"
            )
        self.binary = binary
        self.root = Path(root)
        self.users = dict(users or {})
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The REST API's root URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The DICOMweb root URL (what ``[dicomweb] url`` names)."""
        return f"{self.base}/dicom-web"

    def _config(self) -> dict[str, object]:
        db = self.root / "db"
        return {
            "Name": "slidefed-test",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "HttpThreadsCount": 8,
            "StorageCompression": False,
            "OverwriteInstances": True,
        }

    def start(self, timeout: float = 60.0) -> Self:
        """Start Orthanc and wait until its REST API answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        log = (self.root / "orthanc.log").open("ab")
        self._proc = subprocess.Popen(
            [self.binary, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"Orthanc exited with {self._proc.returncode} at start; see "
                    f"{self.root / 'orthanc.log'}"
                )
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"Orthanc did not answer on {self.base} in {timeout:.0f} s")

    def _answers(self) -> bool:
        import requests

        try:
            response = requests.get(
                f"{self.base}/system", auth=self._auth(), timeout=2.0
            )
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); its database stays."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def store(self, files: Iterable[Path]) -> list[str]:
        """Store DICOM files through the REST API; their Orthanc ids."""
        import requests

        ids = []
        for path in files:
            response = requests.post(
                f"{self.base}/instances",
                data=Path(path).read_bytes(),
                auth=self._auth(),
                headers={"Content-Type": "application/dicom"},
                timeout=60.0,
            )
            response.raise_for_status()
            ids.append(str(response.json()["ID"]))
        return ids

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = [
    "DICOMWEB_PLUGIN",
    "OrthancServer",
    "free_port",
    "orthanc_available",
    "orthanc_binary",
]
