"""Skipped tiles in the site log: once per list, not on every message.

Every message of a run loads the site's tiles again (each in a new ClientApp
process); the list of skipped tiles is logged when it differs from the one
logged last (its digest is kept in the site's state folder), ten tiles by the
hash of their name and the rest counted in one line.
"""

from __future__ import annotations

import hashlib
import logging

from slidefed.client.config import SiteConfig

logger = logging.getLogger(__name__)

MAX_SKIP_LINES = 10
"""Skipped tiles logged one by one; the rest are counted in one line."""
SKIPS_LOGGED = "tile-skips-logged.sha256"
"""File in the site's state folder: the digest of the skip list last logged."""


def log_skips_once(config: SiteConfig, skipped: list[tuple[str, str]]) -> None:
    """Log the skipped tiles when the list differs from the one logged last.

    Every message of a run loads the tiles again (each in a new process): the
    same list is logged once, not on every message.
    """
    digest = hashlib.sha256(repr(sorted(skipped)).encode()).hexdigest()
    memo = config.state_dir / SKIPS_LOGGED
    try:
        if memo.read_text().strip() == digest:
            logger.debug("%d tiles skipped, as logged before", len(skipped))
            return
    except OSError:
        pass
    for name, reason in skipped[:MAX_SKIP_LINES]:
        logger.warning(
            "tile skipped: %s (%s)",
            hashlib.sha256(name.encode()).hexdigest()[:12],
            reason,
        )
    if len(skipped) > MAX_SKIP_LINES:
        reasons = sorted({reason for _, reason in skipped[MAX_SKIP_LINES:]})
        logger.warning(
            "%d more tiles skipped (%s)",
            len(skipped) - MAX_SKIP_LINES,
            "; ".join(reasons[:5]) + ("; ..." if len(reasons) > 5 else ""),
        )
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest + "\n")
    except OSError:  # a read-only state folder: logged again next time
        pass


__all__ = ["MAX_SKIP_LINES", "SKIPS_LOGGED", "log_skips_once"]
