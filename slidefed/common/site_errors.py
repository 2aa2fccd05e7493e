"""The table of every error a site may send: a code and its fixed message.

An error reply that leaves a site carries exactly one entry of this table: the code
and, as its reason, the message written here, nothing else. What made the site
refuse or fail (which budget, which rule, the exception) stays at the site, in its
log and its audit log; the table's texts name the kind of refusal, never data.
The egress guard at the site (:mod:`slidefed.client.egress`) replaces any other
error reply with :attr:`SiteError.EGRESS_BLOCKED`. The coordinator shows a site's
error by its code, from the same table (:func:`describe_reply_error`), so a reason a
site did not take from the table is never displayed either.

Codes are stable: a code keeps its meaning across releases; a new kind of error gets
a new code. Flower reserves the small codes (0-8, :data:`FLOWER_ERRORS`) for its own
runtime; slidefed's start at 4001.
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType

from slidefed.common.errors import PolicyViolation


class SiteError(IntEnum):
    """Codes of the error replies a site sends (their messages: :data:`SITE_ERRORS`)."""

    REFUSED = 4001
    APP_EXCEPTION = 4002
    EGRESS_BLOCKED = 4003
    FAILED = 4004
    APP_NOT_STARTED = 4005
    BUDGET = 4101
    APP_NOT_APPROVED = 4102
    LEDGER_CHECK_FAILED = 4103
    SITE_NOT_PREPARED = 4104
    EVALUATION_CAP = 4105
    TOO_FEW_EVAL_UNITS = 4106
    TASK_NOT_ALLOWED = 4107
    ENCODER_DIFFERS = 4108
    CLIPPING_NORM = 4109
    MODEL_DIFFERS = 4110
    MODEL_TOO_LARGE = 4111
    STORAGE_ERROR = 4112
    RUN_CONFIG_INVALID = 4113
    NO_TRAINING_DATA = 4114


SITE_ERRORS: MappingProxyType[int, str] = MappingProxyType(
    {
        SiteError.REFUSED: "refused by the site's policy",
        SiteError.APP_EXCEPTION: (
            "the ClientApp raised an exception; details are in the site log"
        ),
        SiteError.EGRESS_BLOCKED: "egress guard blocked the reply",
        SiteError.FAILED: (
            "the site could not complete the request; details are in the site log"
        ),
        SiteError.APP_NOT_STARTED: (
            "the site could not start the app; details are in the site log"
        ),
        SiteError.BUDGET: "refused: privacy budget spent or too small for this run",
        SiteError.APP_NOT_APPROVED: "refused: app not approved by this site",
        SiteError.LEDGER_CHECK_FAILED: "refused: ledger check failed",
        SiteError.SITE_NOT_PREPARED: "refused: site not prepared",
        SiteError.EVALUATION_CAP: "refused: evaluation cap reached",
        SiteError.TOO_FEW_EVAL_UNITS: (
            "refused: too few held-out units for the site's minimum"
        ),
        SiteError.TASK_NOT_ALLOWED: "refused: task not allowed by the site's policy",
        SiteError.ENCODER_DIFFERS: "refused: encoder differs from the site's",
        SiteError.CLIPPING_NORM: "refused: clipping norm above the site's limit",
        SiteError.MODEL_DIFFERS: "refused: model differs from the site's own model",
        SiteError.MODEL_TOO_LARGE: "refused: model larger than the site's limit",
        SiteError.STORAGE_ERROR: "refused: site storage error",
        SiteError.RUN_CONFIG_INVALID: "refused: invalid run config",
        SiteError.NO_TRAINING_DATA: "refused: no training data for this run",
    }
)
"""Code -> the fixed message a site sends with it, for every :class:`SiteError`."""

FLOWER_ERRORS: MappingProxyType[int, str] = MappingProxyType(
    {
        0: "Flower: unknown error",
        1: "Flower: the ClientApp could not be loaded",
        2: "Flower: the ClientApp raised an exception",
        3: "Flower: Message Unavailable (the message expired or never existed)",
        4: "Flower: Reply Message Unavailable (the reply expired)",
        5: "Flower: Node Unavailable (no heartbeat from the site)",
        6: "Flower: a mod's precondition failed",
        7: "Flower: the FAB could not be verified",
        8: "Flower: the ClientApp stopped responding",
    }
)
"""Flower's own error codes (``flwr.common.constant.ErrorCode``), as the server shows
them; their reasons come from Flower's runtime and are not displayed."""


class SiteRefusal(PolicyViolation):
    """A refusal whose reply is the table entry ``code``; the message stays at the site.

    Parameters
    ----------
    message : str
        What broke the policy and how to fix it (site log and audit log only).
    code : SiteError
        The table entry the reply carries.
    """

    def __init__(self, message: str, *, code: SiteError) -> None:
        super().__init__(message)
        self.code = code


def site_error_message(code: SiteError) -> str:
    """The fixed message of ``code``.

    Parameters
    ----------
    code : SiteError
        An entry of the table.

    Returns
    -------
    str
        Its message, exactly as it leaves the site.
    """
    return SITE_ERRORS[code]


def is_site_error(code: int, reason: str | None) -> bool:
    """Whether ``(code, reason)`` is exactly an entry of the table.

    Parameters
    ----------
    code : int
        The error reply's code.
    reason : str or None
        The error reply's reason.

    Returns
    -------
    bool
        True only for a table code with its table message, character for character.
    """
    return not isinstance(code, bool) and SITE_ERRORS.get(code) == reason


def describe_reply_error(code: int, reason: str | None = None) -> str:
    """How the coordinator shows an error reply: by its code, from the tables.

    The reason a site sent is never shown: a table code gets the table's message,
    one of Flower's codes Flower's fixed text, any other code says that it is not
    in the table.

    Parameters
    ----------
    code : int
        The error reply's code.
    reason : str or None
        Its reason; only compared with the table (a mismatch is said, not shown).

    Returns
    -------
    str
        E.g. ``"refused: ledger check failed (site error 4103)"``.
    """
    if code in SITE_ERRORS:
        text = f"{SITE_ERRORS[code]} (site error {code})"
        if reason is not None and reason != SITE_ERRORS[code]:
            text += "; the site sent another reason, not shown"
        return text
    if code in FLOWER_ERRORS:
        return f"{FLOWER_ERRORS[code]} (Flower error {code})"
    return f"error code {code}, not in slidefed's table of site errors"


__all__ = [
    "FLOWER_ERRORS",
    "SITE_ERRORS",
    "SiteError",
    "SiteRefusal",
    "describe_reply_error",
    "is_site_error",
    "site_error_message",
]
