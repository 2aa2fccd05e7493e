"""How the site's SuperNode last ended: written by ``site start``, read by the doctor."""

from __future__ import annotations

import contextlib
import datetime as dt

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig

NODE_STATUS_FILE = "node-status.json"
"""Where ``site start`` records how the SuperNode last ended (in the state folder)."""


class NodeStatus(BaseModel):
    """How the site's SuperNode last ended, written by ``site start``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exit_code: int
    flower_code: int | None = None
    cause: str = ""
    at: str


def read_node_status(config: SiteConfig) -> NodeStatus | None:
    """The last recorded end of the SuperNode, if any (an unreadable record is none).

    Parameters
    ----------
    config : SiteConfig
        The site.

    Returns
    -------
    NodeStatus or None
        The record.
    """
    path = config.state_dir / NODE_STATUS_FILE
    if not path.is_file():
        return None
    with contextlib.suppress(ValueError):
        return NodeStatus.model_validate_json(path.read_text(encoding="utf-8"))
    return None


def record_node_status(
    config: SiteConfig, exit_code: int, flower_code: int | None = None, cause: str = ""
) -> None:
    """Remember how the SuperNode ended, for ``site doctor``.

    Parameters
    ----------
    config : SiteConfig
        The site.
    exit_code : int
        Exit code of ``site start``'s first process to end.
    flower_code : int, optional
        Flower's exit code from the SuperNode's log (305: no activation).
    cause : str
        ``not_registered``, ``tls_untrusted`` or empty.
    """
    status = NodeStatus(
        exit_code=exit_code,
        flower_code=flower_code,
        cause=cause,
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    with contextlib.suppress(OSError):
        (config.state_dir / NODE_STATUS_FILE).write_text(status.model_dump_json())


def clear_node_status(config: SiteConfig) -> None:
    """Forget an earlier failure: the SuperLink has just accepted this node.

    Parameters
    ----------
    config : SiteConfig
        The site.
    """
    (config.state_dir / NODE_STATUS_FILE).unlink(missing_ok=True)


__all__ = [
    "NODE_STATUS_FILE",
    "NodeStatus",
    "clear_node_status",
    "read_node_status",
    "record_node_status",
]
