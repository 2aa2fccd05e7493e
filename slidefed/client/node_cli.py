"""``slidefed site start`` and ``slidefed site doctor``: running a site's node."""

from __future__ import annotations

from slidefed.client.cli import site_app

__all__ = ["site_app"]
