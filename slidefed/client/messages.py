"""Reading instructions and building replies for the ClientApp's handlers.

Error replies (entries of the site's table, :mod:`slidefed.common.site_errors`),
the instruction's config values, the model in, the release's input digest
(everything a release depends on), the ledger's run id and delta.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from flwr.app import (
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from slidefed.client.egress import check_egress
from slidefed.client.privacy.anchor import LedgerMismatch
from slidefed.client.privacy.evaluation_charging import (
    EvaluationRefused as EvaluationCapReached,
)
from slidefed.client.privacy.ledger import stable_run_id
from slidefed.client.privacy.releases import Kind
from slidefed.client.site import Site, code_sha256
from slidefed.client.site_model import check_model_in, site_model_specs
from slidefed.common.arrays import ArraySpec, specs_of, update_nbytes, update_sha256
from slidefed.common.audit.events import EgressBlocked, UpdateReleased
from slidefed.common.errors import PolicyViolation, PrivacyBudgetExhausted
from slidefed.common.model import build_model, feature_dim
from slidefed.common.run_config import RunConfig
from slidefed.common.site_errors import SiteError, SiteRefusal, site_error_message
from slidefed.common.wire import pack_update


def config(msg: Message, key: str, default: float) -> float:
    """A numeric value of the instruction's ConfigRecord."""
    for record in msg.content.config_records.values():
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
    return default


def config_text(msg: Message, key: str) -> str:
    """A string value of the instruction's ConfigRecord, or ''."""
    for record in msg.content.config_records.values():
        value = record.get(key)
        if isinstance(value, str):
            return value
    return ""


def error(msg: Message, code: SiteError) -> Message:
    """The error reply of table entry ``code``: its code and fixed message only.

    Whatever made the site refuse or fail goes to the site's log and audit log,
    never into the reply.
    """
    return Message(Error(code=int(code), reason=site_error_message(code)), reply_to=msg)


def load_model(run: RunConfig, site: Site, msg: Message) -> torch.nn.Module:
    model = build_model(
        run.task,
        feature_dim(run.encoder, run.feature_dim),
        seed=run.seed,
        n_classes=run.n_classes(),
        inputs=run.inputs,
    )
    arrays = incoming_arrays(msg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    return model


_last_read: tuple[object, dict[str, Any]] | None = None


def incoming_arrays(msg: Message) -> dict[str, Any]:
    """The instruction's model as numpy arrays, read once per message.

    The digest of the release's inputs and the model to train both need them;
    the last message's are kept (an instruction's records are never changed).
    """
    global _last_read
    record = next(iter(msg.content.array_records.values()))
    last = _last_read
    if last is not None and last[0] is record:
        return last[1]
    arrays = {k: v.numpy() for k, v in record.items()}
    _last_read = (record, arrays)
    return arrays


def check_model(msg: Message, run: RunConfig, site: Site) -> list[ArraySpec]:
    """The site's own model for the run, once the model sent is that model.

    Raises
    ------
    SiteRefusal
        If the policy forbids the task, the encoder is not the site's, or the
        model sent is too large for the policy or is not the site's model.
    """
    specs = site_model_specs(run, site.config)
    records = list(msg.content.array_records.values()) if msg.has_content() else []
    if len(records) > 1:
        raise SiteRefusal(
            f"the instruction carries {len(records)} ArrayRecords, not one model",
            code=SiteError.MODEL_DIFFERS,
        )
    check_model_in(
        dict(records[0].items()) if records else None, specs, site.config.policy
    )
    return specs


def refusal_code(exc: PolicyViolation) -> SiteError:
    """The table entry that answers a refusal."""
    if isinstance(exc, SiteRefusal):
        return exc.code
    if isinstance(exc, PrivacyBudgetExhausted):
        return SiteError.BUDGET
    if isinstance(exc, LedgerMismatch):
        return SiteError.LEDGER_CHECK_FAILED
    if isinstance(exc, EvaluationCapReached):
        return SiteError.EVALUATION_CAP
    return SiteError.REFUSED


def input_key(
    kind: Kind, msg: Message, fingerprint: dict[str, Any], run: RunConfig, site: Site
) -> str:
    """Everything a release depends on: if any of it changes, it is a new release.

    The model in, the instruction's config, the data (features, bags, tiling: the
    samples' digest), the run config, the site policy and slidefed's code.
    """
    config = {
        k: v
        for record in msg.content.config_records.values()
        for k, v in record.items()
        if isinstance(v, int | float | str | bool)
    }
    digest = hashlib.sha256(kind.encode())
    digest.update(update_sha256(incoming_arrays(msg)).encode())
    digest.update(repr(sorted(config.items())).encode())
    digest.update(str(fingerprint["data_sha256"]).encode())
    digest.update(str(fingerprint["manifest_sha256"]).encode())
    # The run's hyperparameters, not its name: the same inputs under another run
    # name give the same bits (charged again, so never a free release).
    hyper = run.model_dump_json(exclude={"run_name", "resume", "run_dir", "sim_sites"})
    digest.update(hyper.encode())
    digest.update(site.config.policy.model_dump_json().encode())
    digest.update(code_sha256().encode())
    return digest.hexdigest()


def ledger_run(run: RunConfig, context: Context) -> int:
    """The ledger's id of the run: stable across coordinator restarts when named."""
    return stable_run_id(run.run_name) if run.run_name else context.run_id


def reply(
    msg: Message, arrays: dict[str, Any] | None, metrics: dict[str, Any]
) -> Message:
    """The reply carrying ``metrics`` and, packed, the update ``arrays``."""
    content: dict[str, Any] = {}
    if arrays is not None:
        content["arrays"] = pack_update(arrays)
    content["metrics"] = MetricRecord(metrics)
    return Message(RecordDict(content), reply_to=msg)


def delta(run: RunConfig, site: Site, n_units: int) -> float:
    delta = site.config.policy.delta_for(n_units)
    return min(delta, run.target_delta) if run.target_delta > 0 else delta


def evaluation_cap(run: RunConfig, site: Site) -> int:
    """Evaluations a run may ask for: the policy's cap, else one per planned round."""
    cap = site.config.policy.max_evaluations_per_run
    return run.num_server_rounds if cap is None else cap


def egress_problem(
    context: Context,
    site: Site,
    server_round: int,
    state: dict[str, Any] | None,
    metrics: dict[str, Any],
    specs: list[ArraySpec] | None,
) -> str | None:
    """Why the reply may not leave (audited), or None."""
    problem = check_egress(state, metrics, specs if state is not None else None)
    if problem:
        site.audit.append(
            EgressBlocked(reason=problem), run_id=context.run_id, round=server_round
        )
    return problem


def audit_release(
    context: Context,
    site: Site,
    server_round: int,
    state: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """Audit the release of ``state`` with its specs, size, hash and metrics."""
    site.audit.append(
        UpdateReleased(
            arrays=[s.model_dump() for s in specs_of(state)],
            bytes=update_nbytes(state),
            sha256=update_sha256(state),
            metrics=metrics,
        ),
        run_id=context.run_id,
        round=server_round,
    )


__all__ = [
    "audit_release",
    "check_model",
    "config",
    "config_text",
    "delta",
    "egress_problem",
    "error",
    "evaluation_cap",
    "incoming_arrays",
    "input_key",
    "ledger_run",
    "load_model",
    "refusal_code",
    "reply",
]
