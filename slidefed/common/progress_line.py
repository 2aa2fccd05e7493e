"""The ServerApp's one line per round, as written to the run's log and read back.

The ServerApp writes it through Flower's own logger, which Flower forwards to the
run's log (``flwr log RUN_ID CONNECTION``); ``slidefed launch`` follows that log and
prints these lines as the run goes. One format on both sides, here.
"""

from __future__ import annotations

import math
import re

MARKER = "slidefed round "
"""Every per-round line starts with this (after Flower's level and time)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SHAPE = re.compile(r"round \d+/\d+: ")


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def format_round_line(
    *,
    server_round: int,
    rounds: int,
    sites_trained: int,
    sites_evaluated: int,
    accuracy: float | None,
    auc: float | None,
    epsilon_max: float | None,
    errors: int,
) -> str:
    """One round's progress line.

    Parameters
    ----------
    server_round, rounds : int
        This round and the run's last.
    sites_trained, sites_evaluated : int
        Sites whose update was aggregated, and whose held-out metrics were.
    accuracy, auc : float or None
        Held-out metrics, from the sites' noised statistics.
    epsilon_max : float or None
        The highest cumulative epsilon a site reported (each site's own bound; the
        sites' epsilons are never averaged or added).
    errors : int
        Error replies and rejected updates in the round.

    Returns
    -------
    str
        E.g. ``slidefed round 2/5: 3 sites trained, 3 evaluated; accuracy 0.812,
        AUC 0.874 (noised); highest site epsilon 2.410; 0 errors``.
    """
    return (
        f"{MARKER}{server_round}/{rounds}: {sites_trained} sites trained, "
        f"{sites_evaluated} evaluated; accuracy {_number(accuracy)}, "
        f"AUC {_number(auc)} (noised); highest site epsilon "
        f"{_number(epsilon_max)}; {errors} error{'s' if errors != 1 else ''}"
    )


def parse_round_line(line: str) -> str | None:
    """The progress text of a log line (``round 2/5: ...``), or None for other lines.

    Parameters
    ----------
    line : str
        One line of ``flwr log`` output (Flower's level, time and colours
        included).

    Returns
    -------
    str or None
        The line from ``round`` on, without colour codes.
    """
    text = _ANSI.sub("", line)
    at = text.find(MARKER)
    if at < 0:
        return None
    rest = text[at + len("slidefed ") :].strip()
    return rest if _SHAPE.match(rest) else None


__all__ = ["MARKER", "format_round_line", "parse_round_line"]
