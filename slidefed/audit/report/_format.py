"""How the report writes numbers, sizes, times and names (the templates' filters).

Every function returns plain text; the templates escape it.
"""

from __future__ import annotations

import re

_NUMERIC = re.compile(r"[-+]?[0-9][0-9.,e+-]*( [kMG]?B)?")

MISSING = "—"
"""What a cell shows for a value the log does not hold."""


def eps(value: float | None) -> str:
    """Return an epsilon with four decimals."""
    return MISSING if value is None else f"{value:.4f}"


def g(value: float | None, digits: int = 4) -> str:
    """Return a number with ``digits`` significant digits."""
    return MISSING if value is None else f"{value:.{digits}g}"


def size(n: int | None) -> str:
    """Return a byte count in B, kB, MB or GB."""
    if n is None:
        return MISSING
    units = (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10))
    for unit, scale in units:
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def opt(value: object) -> str:
    """Return ``value`` as text, or the missing mark for None."""
    return MISSING if value is None else str(value)


def utc(time: str) -> str:
    """Return an ISO-8601 time to the second, with a space for the ``T``."""
    return time[:19].replace("T", " ")


def slug(name: str) -> str:
    """Return ``name`` as an HTML id (letters, digits, ``-`` and ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "site"


def text_or_none(value: object) -> str | None:
    """Return ``value`` if it is text, else None (a fingerprint's free-form field)."""
    return value if isinstance(value, str) else None


def numeric(value: object) -> bool:
    """Tell whether a cell's text is a number (such cells align right)."""
    return bool(_NUMERIC.fullmatch(str(value)))


__all__ = [
    "MISSING",
    "eps",
    "g",
    "numeric",
    "opt",
    "size",
    "slug",
    "text_or_none",
    "utc",
]
