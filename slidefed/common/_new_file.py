"""Create-once files: key files and certificates are written once, never replaced.

Unlike :mod:`slidefed.common.fileio` (replace a file atomically), these helpers
refuse a path that exists, so that a second ``init`` can never swap a key under a
certificate or a federation's CA under its sites.
"""

from __future__ import annotations

import os
from pathlib import Path

from slidefed.common.errors import ConfigError


def write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` and write ``data`` durably.

    Parameters
    ----------
    path : Path
        File to create; its parent folders are created.
    data : bytes
        Content.
    mode : int
        Permission bits (0o600 for private files), applied whatever the umask.

    Raises
    ------
    ConfigError
        If the file exists (nothing is ever overwritten) or cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists; slidefed never overwrites it. "
            "Keep using it, or move it aside to create a new one"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror}; "
            "check that its folder exists and is writable"
        ) from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # the umask must not widen or narrow it
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_new_pair(
    private_path: Path, private: bytes, public_path: Path, public: bytes
) -> None:
    """Write a private file (mode 0600) and its public half (0644), never replacing.

    Parameters
    ----------
    private_path : Path
        The private key.
    private : bytes
        Its content.
    public_path : Path
        The public key or certificate that belongs to it.
    public : bytes
        Its content.

    Raises
    ------
    ConfigError
        If either file exists or cannot be created; a private file written
        before the public one failed is removed again.
    """
    write_new_file(private_path, private, mode=0o600)
    try:
        write_new_file(public_path, public, mode=0o644)
    except BaseException:
        # Half a pair is worse than none: the next run would refuse both paths.
        private_path.unlink(missing_ok=True)
        raise


__all__ = ["write_new_file", "write_new_pair"]
