"""Numbers that the site's budget check and the auditor's check must share."""

from __future__ import annotations

EPSILON_TOLERANCE = 1e-9
"""Slack of every ``epsilon <= max`` comparison: the site's check before a round
and the auditor's check of a charge use this same value, so they never disagree."""

__all__ = ["EPSILON_TOLERANCE"]
