"""``flower-superlink`` with a longer SQLite lock wait: what ``server start`` runs.

Flower 1.42's SuperLink keeps its state in SQLite and sets ``busy_timeout`` to
5 s (``flwr.supercore.constant.SQLITE_PRAGMAS``, not a command-line option). Under
ten SuperNodes on a small machine a request that waits longer for the write lock
is answered 500 "database is locked". A node's upload is retried (the front turns
the 500 into a 503), but the ServerApp's task heartbeat is not: Flower's heartbeat
thread stops on a 500, the SuperLink expires the task 60 s later and the run fails
with "No heartbeat received from the task". Waiting longer for the lock turns
those 500s into slower answers; a heartbeat that times out on the client side is
retried by Flower.

Run as ``python -m slidefed.deploy.superlink_main <flower-superlink arguments>``.
"""

from __future__ import annotations

import sys

SQLITE_BUSY_TIMEOUT_MS = 60_000
"""How long a SuperLink request waits for SQLite's write lock (Flower's: 5,000)."""


def patched_pragmas(
    pragmas: tuple[tuple[str, str], ...],
) -> tuple[tuple[str, str], ...]:
    """Flower's SQLite pragmas with ``busy_timeout`` set to ours.

    Parameters
    ----------
    pragmas : tuple of (str, str)
        Flower's ``SQLITE_PRAGMAS``.

    Returns
    -------
    tuple of (str, str)
        The same pragmas, ``busy_timeout`` replaced (or added).
    """
    kept = tuple((k, v) for k, v in pragmas if k != "busy_timeout")
    return (("busy_timeout", str(SQLITE_BUSY_TIMEOUT_MS)), *kept)


def apply_lock_wait() -> None:
    """Make every SuperLink connection opened from now on wait longer for the lock."""
    from flwr.supercore import constant, sql_mixin

    # sql_mixin reads its module global at each new connection.
    pragmas = patched_pragmas(constant.SQLITE_PRAGMAS)
    setattr(sql_mixin, "SQLITE_PRAGMAS", pragmas)  # noqa: B010 - Flower's global
    setattr(constant, "SQLITE_PRAGMAS", pragmas)  # noqa: B010


def main() -> None:
    """Patch the lock wait, then run Flower's ``flower-superlink``."""
    from flwr.superlink.cli import flower_superlink

    apply_lock_wait()
    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
