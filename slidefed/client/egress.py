"""Egress guard: only the model's arrays and allow-listed scalar metrics leave.

Two layers use the same rules:

- :func:`check_egress`, called by slidefed's own handlers before they build a reply;
- :func:`egress_guard_mod`, a Flower client mod that inspects every reply as it
  leaves the ClientApp, whatever handler made it. The ClientApp attaches it
  (``ClientApp(mods=[egress_guard_mod])``), and the site's runtime wraps every
  approved app in it as well (:mod:`slidefed.deploy.approval_gate`).

What may leave (anything else is blocked, the reply is replaced by an error reply
with code :data:`EGRESS_BLOCKED`, and ``egress_blocked`` is audited):

- in the reply to a ``train`` instruction, one ArrayRecord with exactly the arrays
  the server sent (same names in the same order, same shapes, the same dtype or a
  narrower float such as float16 for float32, numpy serialisation, finite values,
  no larger than the model); no arrays otherwise;
- MetricRecords and ConfigRecords whose keys are on :data:`ALLOWED_METRICS` and
  whose values are finite scalar numbers (no strings, bytes or lists);
- error replies with a short reason (at most :data:`MAX_ERROR_REASON` characters).
  An exception raised by the app is answered with its type only: exception texts
  can carry anything.

Neither the error reply nor the audit record repeats what was blocked: names that
did not come from the server are counted and hashed, never written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.common.arrays import ArraySpec, validate_update
from slidefed.common.errors import SlidefedError

logger = logging.getLogger(__name__)

EGRESS_BLOCKED = 4003
"""Error code of a reply the egress guard replaced (slidefed's BLOCKED)."""

APP_EXCEPTION = 4002
"""Error code of a reply that replaced an exception raised by the app."""

MAX_ERROR_REASON = 1024
"""Longest error reason that may leave the site."""

NPY_HEADER_SLACK = 4096
"""Bytes allowed per array beyond its payload (the ``.npy`` header)."""

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
    """Why a reply was blocked; safe to send and to audit (no content of it)."""

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
    reply_records: list[Any], sent: dict[str, Any]
) -> EgressVerdict | None:
    if not reply_records:
        return None
    if not sent:
        return EgressVerdict(rule="arrays in a reply that may carry none")
    if len(reply_records) != 1:
        return EgressVerdict(
            rule="more than one ArrayRecord", detail=f"{len(reply_records)} records"
        )
    record = reply_records[0]
    names = list(record.keys())
    if names != list(sent):
        extra = [n for n in names if n not in sent]
        missing = [n for n in sent if n not in names]
        detail = f"{len(extra)} unexpected (names sha256 {_fingerprint(extra)}), "
        detail += f"missing {missing}" if missing else "none missing"
        if not extra and not missing:
            detail = "same arrays in another order"
        return EgressVerdict(
            rule="arrays differ from the model the server sent", detail=detail
        )
    budget = 0
    for name, array in record.items():
        want = sent[name]
        budget += len(want.data) + NPY_HEADER_SLACK
        if array.stype != want.stype or not _dtype_fits(array.dtype, want.dtype):
            return EgressVerdict(
                rule="array dtype differs from the model",
                detail=f"{name}: {array.dtype} instead of {want.dtype}",
            )
        if tuple(array.shape) != tuple(want.shape):
            return EgressVerdict(
                rule="array shape differs from the model",
                detail=f"{name}: {tuple(array.shape)} instead of {tuple(want.shape)}",
            )
        if len(array.data) > len(want.data) + NPY_HEADER_SLACK:
            return EgressVerdict(rule="array larger than the model", detail=name)
        try:
            value = array.numpy()
        except (TypeError, ValueError, OSError):
            return EgressVerdict(rule="array cannot be read as numpy", detail=name)
        if str(value.dtype) != array.dtype or tuple(value.shape) != tuple(want.shape):
            return EgressVerdict(
                rule="array data disagrees with its header", detail=name
            )
        if not np.issubdtype(value.dtype, np.floating) or not np.all(
            np.isfinite(value)
        ):
            return EgressVerdict(rule="array not finite floating point", detail=name)
    if sum(len(a.data) for a in record.values()) > budget:
        return EgressVerdict(rule="reply larger than the model")
    return None


def _dtype_fits(got: str, want: str) -> bool:
    """The server's dtype, or a narrower float (float16 for float32: less capacity)."""
    if got == want:
        return True
    try:
        have, sent = np.dtype(got), np.dtype(want)
    except TypeError:
        return False
    return bool(
        np.issubdtype(have, np.floating)
        and np.issubdtype(sent, np.floating)
        and have.itemsize < sent.itemsize
    )


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


def inspect_reply(instruction: Any, reply: Any) -> EgressVerdict | None:
    """Why ``reply`` may not leave the site, or None when it may.

    Parameters
    ----------
    instruction : flwr.app.Message
        The message from the server that ``reply`` answers.
    reply : flwr.app.Message
        What the ClientApp returned.

    Returns
    -------
    EgressVerdict or None
        The rule that blocks it.
    """
    if reply.has_error():
        if len(reply.error.reason or "") > MAX_ERROR_REASON:
            return EgressVerdict(
                rule="error reason too long",
                detail=f"{len(reply.error.reason)} characters",
            )
        return None
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
    sent = _arrays_sent(instruction) if _is_train(instruction) else {}
    return (
        _check_arrays(list(content.array_records.values()), sent)
        or _check_scalars("metric", list(content.metric_records.values()))
        or _check_scalars("config", list(content.config_records.values()))
    )


def _is_train(instruction: Any) -> bool:
    kind = str(instruction.metadata.message_type)
    return kind == "train" or kind.startswith("train.")


def _site_config_of(context: Any) -> Path | None:
    """The site.toml of this node (deployment or simulation), if it has one."""
    node = dict(context.node_config)
    if "site-config" in node:
        return Path(str(node["site-config"]))
    sites = [
        p for p in str(dict(context.run_config).get("sim-sites", "")).split(",") if p
    ]
    if "partition-id" in node and sites:
        pid = int(node["partition-id"])
        if 0 <= pid < len(sites):
            return Path(sites[pid])
    return None


def _audit_block(instruction: Any, context: Any, verdict: EgressVerdict) -> None:
    path = _site_config_of(context)
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


def egress_guard_mod(msg: Any, ctx: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower client mod: let a reply leave only if it passes the egress rules.

    Parameters
    ----------
    msg : flwr.app.Message
        The instruction from the server.
    ctx : flwr.app.Context
        The node's context (``node_config["site-config"]`` finds the audit log).
    call_next : callable
        The rest of the ClientApp.

    Returns
    -------
    flwr.app.Message
        The reply, or an error reply (code :data:`EGRESS_BLOCKED`) in its place.
    """
    from flwr.app import Error, Message

    try:
        reply = call_next(msg, ctx)
    except Exception as exc:  # its text must not leave the site
        logger.error(
            "the ClientApp raised %s; its message stays at the site", type(exc).__name__
        )
        logger.debug("ClientApp exception", exc_info=exc)
        reason = (
            f"the ClientApp raised {type(exc).__name__}; details are in the site log"
        )
        return Message(Error(code=APP_EXCEPTION, reason=reason), reply_to=msg)
    try:
        verdict = inspect_reply(msg, reply)
    except Exception:  # noqa: BLE001 - an uninspectable reply is blocked
        verdict = EgressVerdict(rule="reply could not be inspected")
    if verdict is None:
        return reply
    _audit_block(msg, ctx, verdict)
    logger.warning(
        "egress guard blocked a %s reply: %s", msg.metadata.message_type, verdict.rule
    )
    reason = f"egress guard blocked the reply: {verdict.rule}"
    return Message(Error(code=EGRESS_BLOCKED, reason=reason), reply_to=msg)


__all__ = [
    "ALLOWED_METRICS",
    "APP_EXCEPTION",
    "EGRESS_BLOCKED",
    "MAX_ERROR_REASON",
    "EgressVerdict",
    "check_egress",
    "egress_guard_mod",
    "inspect_reply",
]
