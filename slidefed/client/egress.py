"""Egress guard: only the model's arrays, allowed metrics and table errors leave.

Two layers use the same rules:

- :func:`check_egress`, called by slidefed's own handlers before they build a reply;
- :func:`egress_guard_mod`, a Flower client mod that inspects every reply as it
  leaves the ClientApp, whatever handler made it. The ClientApp attaches it
  (``ClientApp(mods=[egress_guard_mod])``), and the site's runtime wraps every
  approved app in it as well (:mod:`slidefed.deploy.approval_gate`).

What may leave (anything else is blocked: the reply is replaced by the table entry
:attr:`~slidefed.common.site_errors.SiteError.EGRESS_BLOCKED`, and
``egress_blocked`` is audited):

- in the reply to a ``train`` instruction, one ArrayRecord with exactly the arrays
  of the model the site builds itself for the run
  (:func:`slidefed.client.site_model.site_model_specs`), which must also be the
  arrays the server sent: same names in the same order, same shapes, the same dtype
  or a narrower float such as float16 for float32, numpy serialisation, finite
  values, and in all no more bytes than the site's egress limit (the smaller of
  ``policy.max_update_bytes`` and the size of that model); or the same model as
  one packed array (:mod:`slidefed.common.wire`: exactly the model's number of
  values, under the same dtype, size and finiteness rules); no arrays otherwise;
- MetricRecords and ConfigRecords whose keys are on :data:`ALLOWED_METRICS` and
  whose values are finite scalar numbers (no strings, bytes or lists);
- error replies that are exactly an entry of the site's table of errors
  (:mod:`slidefed.common.site_errors`): a table code with its table message. An
  exception raised by the app is answered with
  :attr:`~slidefed.common.site_errors.SiteError.APP_EXCEPTION`; its type and text
  stay in the site log.

Neither the error reply nor the audit record repeats what was blocked: names that
did not come from the site's model are counted and hashed, and of an error reason
not in the table only its length and a hash are written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.client.site_model import (
    NPY_HEADER_SLACK,
    dtype_fits,
    expected_model,
    site_config_path,
)
from slidefed.common.arrays import ArraySpec, validate_update
from slidefed.common.errors import SlidefedError
from slidefed.common.site_errors import (
    SITE_ERRORS,
    SiteError,
    is_site_error,
    site_error_message,
)
from slidefed.common.wire import PACKED, WireFormatError, is_packed, read_packed

logger = logging.getLogger(__name__)

EGRESS_BLOCKED = SiteError.EGRESS_BLOCKED
"""Error code of a reply the egress guard replaced."""

APP_EXCEPTION = SiteError.APP_EXCEPTION
"""Error code of a reply that replaced an exception raised by the app."""

# Scalar metrics that a reply may carry; everything else is blocked. Training
# replies carry the update's weight and the (public) privacy accounting; evaluation
# replies carry values computed from DP-noised statistics only (see
# slidefed.client.noised_metrics). No loss, no timing, no exact count.
ALLOWED_METRICS = frozenset(
    {
        "num-examples",
        "accuracy",
        "auc",
        "epsilon",
        "epsilon_round",
        "delta",
        "noise_multiplier",
        "macro_f1",
    }
)
# Per-class held-out accuracy of a tile classifier (acc_class_00, ...) and the bins
# of the noised score histogram (neg_bin_00, pos_bin_00, ...).
_PATTERNED_METRIC = re.compile(r"acc_class_\d{2}|(neg|pos)_bin_\d{2}")


def is_allowed_metric(key: str) -> bool:
    """Whether a scalar metric named ``key`` may leave the site."""
    return key in ALLOWED_METRICS or _PATTERNED_METRIC.fullmatch(key) is not None


def check_egress(
    arrays: Mapping[str, NDArray[np.generic]] | None,
    metrics: Mapping[str, object],
    expected: list[ArraySpec] | None,
) -> str | None:
    """Why a reply may not leave the site, or None when it may."""
    if arrays is not None:
        if expected is None:
            return "arrays in a reply that must carry none"
        problem = validate_update(arrays, expected)
        if problem:
            return problem
    for key, value in metrics.items():
        if not is_allowed_metric(key):
            return f"metric {key!r} is not on the allow-list"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key!r} is not a number"
        if not math.isfinite(float(value)):
            return f"metric {key!r} is not finite"
    return None


class EgressVerdict(BaseModel):
    """Why a reply was blocked; safe to audit (no content of it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    detail: str = ""


def _fingerprint(names: list[str]) -> str:
    """Short hash of names that must not be written out."""
    return hashlib.sha256("\x00".join(sorted(names)).encode()).hexdigest()[:16]


def _arrays_sent(instruction: Any) -> dict[str, Any]:
    """The arrays of the instruction, by name (empty when it carried none)."""
    sent: dict[str, Any] = {}
    if instruction.has_content():
        for record in instruction.content.array_records.values():
            sent.update(record.items())
    return sent


def _check_arrays(
    reply_records: list[Any],
    sent: dict[str, Any],
    expected: list[ArraySpec] | None,
    limit: int,
) -> EgressVerdict | None:
    if not reply_records:
        return None
    if not sent:
        return EgressVerdict(rule="arrays in a reply that may carry none")
    if expected is None:
        return EgressVerdict(
            rule="arrays in a reply to a run the site trains no model for"
        )
    if len(reply_records) != 1:
        return EgressVerdict(
            rule="more than one ArrayRecord", detail=f"{len(reply_records)} records"
        )
    record = reply_records[0]
    if is_packed(record):
        return _check_packed(record[PACKED], sent, expected, limit)
    verdict = _check_names(list(record.keys()), [s.name for s in expected], sent)
    if verdict is not None:
        return verdict
    total = sum(len(array.data) for array in record.values())
    if total > limit:
        return EgressVerdict(
            rule="reply larger than the site's egress limit",
            detail=f"{total} bytes, limit {limit}",
        )
    for spec in expected:
        verdict = _check_array(spec.name, record[spec.name], spec, sent[spec.name])
        if verdict is not None:
            return verdict
    return None


def _check_packed(
    array: Any, sent: dict[str, Any], expected: list[ArraySpec], limit: int
) -> EgressVerdict | None:
    """A packed update: the site's model, as the server sent it, in one array."""
    model = [s.name for s in expected]
    if model != list(sent) or any(
        tuple(sent[s.name].shape) != s.shape for s in expected
    ):
        return EgressVerdict(
            rule="the server sent arrays unlike the site's model",
            detail=f"{len(sent)} arrays sent, the site's model has {len(model)}",
        )
    if any(
        array.stype != sent[s.name].stype
        or not dtype_fits(array.dtype, s.dtype)
        or not dtype_fits(array.dtype, sent[s.name].dtype)
        for s in expected
    ):
        return EgressVerdict(
            rule="array dtype differs from the model",
            detail=f"{PACKED}: {array.dtype}",
        )
    if len(array.data) > limit:
        return EgressVerdict(
            rule="reply larger than the site's egress limit",
            detail=f"{len(array.data)} bytes, limit {limit}",
        )
    try:
        value = read_packed(array, expected)
    except WireFormatError as exc:
        return EgressVerdict(rule="packed update unlike the model", detail=str(exc))
    if not np.all(np.isfinite(value)):
        return EgressVerdict(rule="array not finite floating point", detail=PACKED)
    return None


def _check_names(
    names: list[str], model: list[str], sent: dict[str, Any]
) -> EgressVerdict | None:
    """The reply's array names must be the site's model's, which the server sent."""
    if names == model and names == list(sent):
        return None
    if model != list(sent):
        return EgressVerdict(
            rule="the server sent arrays unlike the site's model",
            detail=f"{len(sent)} arrays sent, the site's model has {len(model)}",
        )
    extra = [n for n in names if n not in model]
    missing = [n for n in model if n not in names]
    detail = f"{len(extra)} unexpected (names sha256 {_fingerprint(extra)}), "
    detail += f"missing {missing}" if missing else "none missing"
    if not extra and not missing:
        detail = "same arrays in another order"
    return EgressVerdict(rule="arrays differ from the site's model", detail=detail)


def _check_array(
    name: str, array: Any, spec: ArraySpec, want: Any
) -> EgressVerdict | None:
    """One array: the site model's dtype and shape, the server's, finite floats."""
    if (
        array.stype != want.stype
        or not dtype_fits(array.dtype, spec.dtype)
        or not dtype_fits(array.dtype, want.dtype)
    ):
        return EgressVerdict(
            rule="array dtype differs from the model",
            detail=f"{name}: {array.dtype} instead of {spec.dtype}",
        )
    if tuple(array.shape) != spec.shape or tuple(want.shape) != spec.shape:
        return EgressVerdict(
            rule="array shape differs from the model",
            detail=f"{name}: {tuple(array.shape)} instead of {spec.shape}",
        )
    if len(array.data) > len(want.data) + NPY_HEADER_SLACK:
        return EgressVerdict(rule="array larger than the model", detail=name)
    try:
        value = array.numpy()
    except (TypeError, ValueError, OSError):
        return EgressVerdict(rule="array cannot be read as numpy", detail=name)
    if str(value.dtype) != array.dtype or tuple(value.shape) != spec.shape:
        return EgressVerdict(rule="array data disagrees with its header", detail=name)
    if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
        return EgressVerdict(rule="array not finite floating point", detail=name)
    return None


def _check_scalars(kind: str, records: list[Any]) -> EgressVerdict | None:
    for record in records:
        keys = list(record.keys())
        unknown = [k for k in keys if not is_allowed_metric(k)]
        if unknown:
            return EgressVerdict(
                rule=f"{kind} key not on the allow-list",
                detail=f"{len(unknown)} keys (names sha256 {_fingerprint(unknown)})",
            )
        for key, value in record.items():
            if isinstance(value, str | bytes):
                return EgressVerdict(
                    rule=f"{kind} carries a string or bytes", detail=key
                )
            if isinstance(value, list):
                return EgressVerdict(rule=f"{kind} carries a list", detail=key)
            if not isinstance(value, int | float) or not math.isfinite(float(value)):
                return EgressVerdict(
                    rule=f"{kind} value not a finite number", detail=key
                )
    return None


def _check_error(code: Any, reason: Any) -> EgressVerdict | None:
    """An error reply leaves only as an exact entry of the site's table."""
    if (
        isinstance(code, int)
        and isinstance(reason, str)
        and is_site_error(code, reason)
    ):
        return None
    text = str(reason or "")
    # Neither the reason nor a code outside the table is written: either could
    # carry anything. Only the reason's length and a hash.
    known = "a table code" if code in SITE_ERRORS else "a code not in the table"
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
    return EgressVerdict(
        rule="error reply not in the site's table of errors",
        detail=f"{known}; reason of {len(text)} characters, sha256 {digest}",
    )


def inspect_reply(instruction: Any, reply: Any, context: Any) -> EgressVerdict | None:
    """Why ``reply`` may not leave the site, or None when it may.

    Parameters
    ----------
    instruction : flwr.app.Message
        The message from the server that ``reply`` answers.
    reply : flwr.app.Message
        What the ClientApp returned.
    context : flwr.app.Context
        The node's context: the run config and site config, from which the site
        builds its own model and its egress limit.

    Returns
    -------
    EgressVerdict or None
        The rule that blocks it.
    """
    if reply.has_error():
        return _check_error(reply.error.code, reply.error.reason)
    if not reply.has_content():
        return None
    content = reply.content
    known = (
        len(content.array_records)
        + len(content.metric_records)
        + len(content.config_records)
    )
    if known != len(content):
        return EgressVerdict(rule="record of an unknown type")
    arrays = list(content.array_records.values())
    sent = _arrays_sent(instruction) if _is_train(instruction) else {}
    verdict = None
    if arrays and sent:
        expected, limit = expected_model(context)
        verdict = _check_arrays(arrays, sent, expected, limit)
    elif arrays:
        verdict = EgressVerdict(rule="arrays in a reply that may carry none")
    return (
        verdict
        or _check_scalars("metric", list(content.metric_records.values()))
        or _check_scalars("config", list(content.config_records.values()))
    )


def _is_train(instruction: Any) -> bool:
    kind = str(instruction.metadata.message_type)
    return kind == "train" or kind.startswith("train.")


def _audit_block(instruction: Any, context: Any, verdict: EgressVerdict) -> None:
    path = site_config_path(context)
    if path is None:
        logger.warning(
            "egress guard blocked a reply (no site audit log): %s", verdict.rule
        )
        return
    from slidefed.client.keys import site_audit_log
    from slidefed.common.audit.events import EgressGuardBlocked

    server_round = None
    if instruction.has_content():
        for record in instruction.content.config_records.values():
            value = record.get("server-round")
            if isinstance(value, int) and not isinstance(value, bool):
                server_round = value
    try:
        site_audit_log(path).append(
            EgressGuardBlocked(
                message_type=str(instruction.metadata.message_type),
                rule=verdict.rule,
                detail=verdict.detail,
            ),
            run_id=int(context.run_id),
            round=server_round,
        )
    except SlidefedError as exc:
        logger.error("egress guard could not audit a blocked reply: %s", exc)


def table_reply(msg: Any, code: SiteError) -> Any:
    """The error reply of table entry ``code`` to ``msg``: its code and fixed message.

    Parameters
    ----------
    msg : flwr.app.Message
        The instruction it answers.
    code : SiteError
        The entry of the site's table of errors.

    Returns
    -------
    flwr.app.Message
        An error reply carrying exactly that entry.
    """
    from flwr.app import Error, Message

    return Message(Error(code=int(code), reason=site_error_message(code)), reply_to=msg)


def egress_guard_mod(msg: Any, ctx: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower client mod: let a reply leave only if it passes the egress rules.

    Parameters
    ----------
    msg : flwr.app.Message
        The instruction from the server.
    ctx : flwr.app.Context
        The node's context (``node_config["site-config"]`` finds the audit log,
        the policy and, with the run config, the site's own model).
    call_next : callable
        The rest of the ClientApp.

    Returns
    -------
    flwr.app.Message
        The reply, or the table entry :data:`EGRESS_BLOCKED` in its place
        (:data:`APP_EXCEPTION` when the app raised).
    """
    try:
        reply = call_next(msg, ctx)
    except Exception as exc:  # neither its text nor its type may leave the site
        logger.error(
            "the ClientApp raised %s; it is answered with site error %d",
            type(exc).__name__,
            APP_EXCEPTION,
        )
        logger.debug("ClientApp exception", exc_info=exc)
        return table_reply(msg, APP_EXCEPTION)
    try:
        verdict = inspect_reply(msg, reply, ctx)
    except Exception:  # noqa: BLE001 - an uninspectable reply is blocked
        verdict = EgressVerdict(rule="reply could not be inspected")
    if verdict is None:
        return reply
    _audit_block(msg, ctx, verdict)
    logger.warning(
        "egress guard blocked a %s reply: %s", msg.metadata.message_type, verdict.rule
    )
    return table_reply(msg, EGRESS_BLOCKED)


__all__ = [
    "ALLOWED_METRICS",
    "APP_EXCEPTION",
    "EGRESS_BLOCKED",
    "EgressVerdict",
    "check_egress",
    "egress_guard_mod",
    "inspect_reply",
    "is_allowed_metric",
    "table_reply",
]
