"""The table of site errors: stable, complete in the docs, and shown by code only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.common.constant import ErrorCode

from slidefed.common.site_errors import (
    FLOWER_ERRORS,
    SITE_ERRORS,
    SiteError,
    describe_reply_error,
    is_site_error,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "site-guide.md"


def test_every_code_has_one_message_and_none_is_flowers() -> None:
    assert set(SITE_ERRORS) == set(SiteError)
    assert len(set(SITE_ERRORS.values())) == len(SITE_ERRORS)
    flower = {v for k, v in vars(ErrorCode).items() if not k.startswith("_")}
    assert set(FLOWER_ERRORS) == flower
    assert not set(SITE_ERRORS) & flower
    # Codes are stable: these kept their numbers from before the table existed.
    kept = (SiteError.REFUSED, SiteError.APP_EXCEPTION, SiteError.EGRESS_BLOCKED)
    assert [int(c) for c in kept] == [4001, 4002, 4003]


def test_the_site_guide_lists_every_code_with_its_message() -> None:
    rows = dict(
        re.findall(r"^\| (\d{4}) \| ([^|]+?) \|", DOCS.read_text(), re.MULTILINE)
    )
    assert {int(k): v for k, v in rows.items()} == dict(SITE_ERRORS)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4001, "refused by the site's policy "),
        (4001, None),
        (9999, "refused by the site's policy"),
        (4101, SITE_ERRORS[4001]),  # another entry's text
    ],
)
def test_only_exact_entries_are_site_errors(code: int, reason: str | None) -> None:
    assert not is_site_error(code, reason)


def test_the_coordinator_shows_an_error_by_its_code_never_its_reason() -> None:
    assert describe_reply_error(4103, "refused: ledger check failed") == (
        "refused: ledger check failed (site error 4103)"
    )
    shown = describe_reply_error(4103, "patient P-123")
    assert "P-123" not in shown
    assert shown.startswith("refused: ledger check failed (site error 4103)")
    assert "Node Unavailable" in describe_reply_error(5, "Error: Node Unavailable")
    unknown = describe_reply_error(77, "patient P-123")
    assert "P-123" not in unknown
    assert "77" in unknown
