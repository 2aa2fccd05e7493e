"""The jinja2 environment of the report: its templates, filters and escaping.

Autoescaping is on for every template, so every piece of text that comes from a log
is escaped where it is written into the page, whatever its place (text, attribute).
The templates ship inside the package (``slidefed/audit/report/templates``).
"""

from __future__ import annotations

import functools

import jinja2

from slidefed.audit.report import _format

MAX_ROWS = 500
"""Rows shown per table; the rest are counted."""


@functools.cache
def environment() -> jinja2.Environment:
    """Return the report's environment (built once)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("slidefed.audit.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        eps=_format.eps,
        g=_format.g,
        size=_format.size,
        opt=_format.opt,
        utc=_format.utc,
        slug=_format.slug,
        text_or_none=_format.text_or_none,
    )
    env.tests["numeric"] = _format.numeric
    env.globals["max_rows"] = MAX_ROWS
    env.globals["missing"] = _format.MISSING
    return env


__all__ = ["MAX_ROWS", "environment"]
