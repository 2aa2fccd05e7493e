"""The egress guard mod and the site runtime's code approval gate, without a runtime."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from slidefed.client.config import load_site_config
from slidefed.client.egress import (
    APP_EXCEPTION,
    EGRESS_BLOCKED,
    egress_guard_mod,
    inspect_reply,
)
from slidefed.common.errors import ConfigError
from slidefed.common.model import build_model
from slidefed.common.site_errors import SITE_ERRORS, SiteError, site_error_message
from slidefed.deploy import approval, approval_gate
from tests.client.messages import keyed_site

PATIENT = "P-000417"
# The model the site builds itself for the default run config (ABMIL on hed).
MODEL = {k: v.numpy() for k, v in build_model("abmil", 24, seed=0).state_dict().items()}
BLOCKED_TEXT = site_error_message(SiteError.EGRESS_BLOCKED)


@pytest.fixture
def site_toml(tmp_path: Path) -> Path:
    return keyed_site(tmp_path, "egress-test")


def _instruction(
    kind: str = "train", arrays: bool = True, model: dict[str, Any] | None = None
) -> Message:
    meta = Metadata(
        run_id=7,
        message_id=f"{kind}-1",
        src_node_id=1,
        dst_node_id=2,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=kind,
    )
    records: dict[str, Any] = {"config": ConfigRecord({"server-round": 3})}
    if arrays:
        sent = MODEL if model is None else model
        records["arrays"] = ArrayRecord({k: Array(v) for k, v in sent.items()})
    return Message(content=RecordDict(records), metadata=meta)  # type: ignore[call-overload,no-any-return]


def _context(site_toml: Path | None, **run: Any) -> Context:
    node: dict[str, bool | float | int | str] = (
        {"site-config": str(site_toml)} if site_toml else {}
    )
    return Context(
        run_id=7, node_id=2, node_config=node, state=RecordDict(), run_config=run
    )


def _reply(
    msg: Message, arrays: dict[str, Any] | None = None, **records: Any
) -> Message:
    content: dict[str, Any] = dict(records)
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(RecordDict(content), reply_to=msg)


def _metrics(**extra: Any) -> MetricRecord:
    return MetricRecord({"num-examples": 8, "epsilon": 0.5, **extra})


def _audit(site_toml: Path) -> list[dict[str, Any]]:
    path = load_site_config(site_toml).audit_path
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _app(handler: Any) -> ClientApp:
    app = ClientApp(mods=[egress_guard_mod])
    app.train()(handler)
    app.evaluate()(handler)
    return app


def _assert_blocked(reply: Message, site_toml: Path | None = None) -> str:
    """The reply is exactly the table's "blocked" entry; the rule audited, if any."""
    assert reply.has_error()
    assert (reply.error.code, reply.error.reason) == (EGRESS_BLOCKED, BLOCKED_TEXT)
    if site_toml is None:
        return ""
    [record] = _audit(site_toml)
    assert record["event"] == "egress_blocked"
    return str(record["data"]["rule"])


# ---------------------------------------------------------------- blocked
def test_egress_blocks_a_tile_image_returned_with_the_model(site_toml: Path) -> None:
    tile = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)

    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, {**MODEL, "tile": tile}, metrics=_metrics())

    reply = _app(leaky)(_instruction(), _context(site_toml))
    assert _assert_blocked(reply, site_toml) == "arrays differ from the site's model"
    [record] = _audit(site_toml)
    assert record["run_id"] == 7
    assert record["round"] == 3
    assert "tile" not in json.dumps(record["data"])


def test_egress_blocks_a_tile_image_in_place_of_a_model_array(site_toml: Path) -> None:
    # Right name and shape, pixel dtype.
    tile = np.zeros(MODEL["embed.weight"].shape, dtype=np.uint8)

    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, {**MODEL, "embed.weight": tile}, metrics=_metrics())

    reply = _app(leaky)(_instruction(), _context(site_toml))
    assert "dtype" in _assert_blocked(reply, site_toml)


def test_egress_blocks_a_patient_id_string(site_toml: Path) -> None:
    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(
            msg, MODEL, metrics=_metrics(), config=ConfigRecord({"epsilon": PATIENT})
        )

    reply = _app(leaky)(_instruction(), _context(site_toml))
    assert "string" in _assert_blocked(reply, site_toml)
    assert PATIENT not in json.dumps(_audit(site_toml))


def test_egress_blocks_a_patient_id_hidden_in_a_metric_name(site_toml: Path) -> None:
    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, MODEL, metrics=_metrics(**{PATIENT: 1.0}))

    reply = _app(leaky)(_instruction(), _context(site_toml))
    assert _assert_blocked(reply, site_toml) == "metric key not on the allow-list"
    assert PATIENT not in json.dumps(_audit(site_toml))


def test_egress_blocks_arrays_in_an_evaluate_reply(site_toml: Path) -> None:
    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, MODEL, metrics=_metrics())

    reply = _app(leaky)(_instruction("evaluate"), _context(site_toml))
    assert "may carry none" in _assert_blocked(reply, site_toml)


@pytest.mark.parametrize(
    ("arrays", "rule"),
    [
        ({**MODEL, "head.bias": np.array([np.nan, 0], dtype=np.float32)}, "finite"),
        ({**MODEL, "head.bias": np.zeros(3, dtype=np.float32)}, "shape"),
        ({k: v.astype(np.float64) for k, v in MODEL.items()}, "dtype"),
        ({"head.bias": MODEL["head.bias"]}, "differ"),
        (dict(reversed(MODEL.items())), "differ"),
    ],
)
def test_egress_blocks_arrays_unlike_the_model(
    site_toml: Path, arrays: dict[str, Any], rule: str
) -> None:
    msg = _instruction()
    verdict = inspect_reply(
        msg, _reply(msg, arrays, metrics=_metrics()), _context(site_toml)
    )
    assert verdict is not None
    assert rule in verdict.rule


def test_egress_checks_the_sites_own_model_not_what_the_server_sent(
    site_toml: Path,
) -> None:
    # The server sends a larger model (an extra array) and the app echoes it: the
    # reply matches the instruction exactly, but not the model the site builds.
    bigger = {**MODEL, "extra.weight": np.zeros((512, 512), dtype=np.float32)}

    def echo(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, bigger, metrics=_metrics())

    reply = _app(echo)(_instruction(model=bigger), _context(site_toml))
    assert _assert_blocked(reply, site_toml) == (
        "the server sent arrays unlike the site's model"
    )


def test_egress_limit_is_the_smaller_of_the_policy_and_the_sites_model(
    site_toml: Path,
) -> None:
    def honest(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, MODEL, metrics=_metrics())

    assert not _app(honest)(_instruction(), _context(site_toml)).has_error()
    site_toml.write_text(site_toml.read_text() + "[policy]\nmax_update_bytes = 4096\n")
    reply = _app(honest)(_instruction(), _context(site_toml))
    assert (
        _assert_blocked(reply, site_toml) == "reply larger than the site's egress limit"
    )


def test_egress_blocks_arrays_of_a_run_the_site_trains_no_model_for(
    site_toml: Path,
) -> None:
    site_toml.write_text(
        site_toml.read_text() + '[policy]\nallowed_tasks = ["tiles"]\n'
    )

    def echo(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, MODEL, metrics=_metrics())

    reply = _app(echo)(_instruction(), _context(site_toml))
    assert "no model" in _assert_blocked(reply, site_toml)


@pytest.mark.parametrize(
    "metrics",
    [
        MetricRecord({"num-examples": 8, "epsilon": float("inf")}),
        MetricRecord({"num-examples": 8, "epsilon": [0.1, 0.2]}),
    ],
)
def test_egress_blocks_non_finite_or_list_metrics(metrics: MetricRecord) -> None:
    msg = _instruction()
    assert (
        inspect_reply(msg, _reply(msg, MODEL, metrics=metrics), _context(None))
        is not None
    )


def test_egress_withholds_the_text_and_type_of_an_app_exception(
    site_toml: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def crashing(_msg: Message, _ctx: Context) -> Message:
        raise ValueError(f"slide of patient {PATIENT} is corrupt")

    reply = _app(crashing)(_instruction(), _context(site_toml))
    assert (reply.error.code, reply.error.reason) == (
        APP_EXCEPTION,
        "the ClientApp raised an exception; details are in the site log",
    )
    assert "ValueError" in caplog.text  # the type name stays in the site log


def test_egress_block_without_a_site_still_blocks() -> None:
    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, MODEL, metrics=_metrics(), config=ConfigRecord({"p": "x"}))

    _assert_blocked(_app(leaky)(_instruction(), _context(None)))


# ---------------------------------------------------------------- allowed
def test_egress_lets_the_model_and_allowed_metrics_leave(site_toml: Path) -> None:
    def honest(msg: Message, _ctx: Context) -> Message:
        if msg.metadata.message_type == "evaluate":
            return _reply(msg, metrics=MetricRecord({"num-examples": 5, "auc": 0.7}))
        return _reply(msg, {k: v + 0.1 for k, v in MODEL.items()}, metrics=_metrics())

    app = _app(honest)
    train = app(_instruction(), _context(site_toml))
    assert not train.has_error()
    assert list(train.content.array_records["arrays"]) == list(MODEL)
    evaluate = app(_instruction("evaluate"), _context(site_toml))
    assert not evaluate.has_error()
    assert _audit(site_toml) == []


def test_egress_lets_a_float16_update_of_a_float32_model_leave() -> None:
    msg = _instruction()
    narrow = {k: v.astype(np.float16) for k, v in MODEL.items()}
    assert (
        inspect_reply(msg, _reply(msg, narrow, metrics=_metrics()), _context(None))
        is None
    )


@pytest.mark.parametrize("code", sorted(SITE_ERRORS))
def test_egress_lets_every_entry_of_the_table_leave(code: int) -> None:
    msg = _instruction()
    refusal = Message(Error(code=code, reason=SITE_ERRORS[code]), reply_to=msg)
    assert inspect_reply(msg, refusal, _context(None)) is None


def test_egress_guard_is_attached_to_the_slidefed_client_app() -> None:
    from slidefed.client.app import app

    assert egress_guard_mod in app._mods


# ------------------------------------------- code approval (site runtime)
def test_approval_list_round_trips_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / approval.APPROVALS_FILE
    assert not approval.load_approved_apps(path).app
    digest = "ab" * 32
    approval.approve_app(path, digest.upper(), name="slidefed-run", note="by IT")
    approval.approve_app(path, digest)
    apps = approval.load_approved_apps(path)
    assert len(apps.app) == 1
    assert apps.approves(digest)
    assert not apps.approves("cd" * 32)
    with pytest.raises(ConfigError, match="64 hex"):
        approval.approve_app(path, "abc")
    path.write_text("[[app]]\nfab_hash = 'nothex'\n")
    with pytest.raises(ConfigError, match="fab_hash"):
        approval.load_approved_apps(path)


def test_app_dir_hash_is_the_hash_of_flowers_fab(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    from slidefed.simulation import write_app_dir

    app_dir = write_app_dir(tmp_path / "app")
    digest = approval.fab_hash_of_app_dir(app_dir)
    assert digest == approval.fab_hash_of_bytes(build_fab_from_disk(app_dir))
    assert digest == approval.fab_hash_of_app_dir(app_dir)  # deterministic
    with pytest.raises(ConfigError, match="pyproject"):
        approval.fab_hash_of_app_dir(tmp_path)


def test_approval_gate_refuses_and_audits_before_unpacking(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    installed: list[bytes] = []
    monkeypatch.setattr(rc, "install_from_fab", lambda fab, **_k: installed.append(fab))
    monkeypatch.setattr(
        rc, "pull_task_input", lambda _c: (None, _context(site_toml), None, None)
    )
    monkeypatch.setattr(rc, "get_load_client_app_fn", lambda **_k: None)
    monkeypatch.setattr(rc, "push_message", rc.push_message)  # restored after
    approval_gate._install_hooks(site_toml)
    rc.pull_task_input(None)
    with pytest.raises(approval.AppNotApproved, match="not approved"):
        rc.install_from_fab(b"unapproved fab bytes", skip_prompt=True)
    assert installed == []
    [record] = _audit(site_toml)
    assert record["event"] == "app_refused"
    assert record["run_id"] == 7
    assert record["data"]["fab_hash"] == approval.fab_hash_of_bytes(
        b"unapproved fab bytes"
    )
    approval.approve_app(
        approval.approvals_path(site_toml), approval.fab_hash_of_bytes(b"approved fab")
    )
    rc.install_from_fab(b"approved fab", skip_prompt=True)
    assert installed == [b"approved fab"]


def test_approval_gate_puts_the_egress_guard_around_any_app(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    def leaky(msg: Message, _ctx: Context) -> Message:
        return _reply(msg, {"tile": np.zeros((8, 8, 3), dtype=np.uint8)})

    foreign = ClientApp()  # an app that attaches no mods of its own
    foreign.train()(leaky)
    monkeypatch.setattr(rc, "get_load_client_app_fn", lambda **_k: lambda *_a: foreign)
    monkeypatch.setattr(rc, "push_message", rc.push_message)  # restored after
    approval_gate._install_hooks(site_toml)
    loaded = rc.get_load_client_app_fn(
        default_app_ref="", app_path=None, multi_app=True
    )
    reply = loaded("id", "1.0", "hash")(
        message=_instruction(), context=_context(site_toml)
    )
    _assert_blocked(reply, site_toml)


def _flower_error(exc: Exception) -> Message:
    """The error reply Flower's ClientApp runtime builds for an exception."""
    reason = str(type(exc)) + ":<'" + str(exc) + "'>"
    return Message(Error(code=2, reason=reason), reply_to=_instruction())


@pytest.mark.parametrize("refused", [True, False], ids=["not-approved", "other"])
def test_approval_gate_sends_flowers_own_errors_as_table_entries(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    pushed: list[Message] = []
    monkeypatch.setattr(rc, "install_from_fab", lambda fab, **_k: None)
    monkeypatch.setattr(
        rc, "pull_task_input", lambda _c: (None, _context(site_toml), None, None)
    )
    monkeypatch.setattr(rc, "get_load_client_app_fn", lambda **_k: None)
    monkeypatch.setattr(rc, "push_message", lambda _c, msg, _x: pushed.append(msg))
    approval_gate._install_hooks(site_toml)
    rc.pull_task_input(None)
    if refused:
        with pytest.raises(approval.AppNotApproved) as info:
            rc.install_from_fab(b"unapproved fab bytes", skip_prompt=True)
        error: Exception = info.value
    else:
        error = RuntimeError(f"unpacking failed for patient {PATIENT}")

    rc.push_message(None, _flower_error(error), None)
    # A table entry passes as it is.
    table = Message(Error(code=4103, reason=SITE_ERRORS[4103]), reply_to=_instruction())
    rc.push_message(None, table, None)

    code = SiteError.APP_NOT_APPROVED if refused else SiteError.APP_NOT_STARTED
    assert [(m.error.code, m.error.reason) for m in pushed] == [
        (code, site_error_message(code)),
        (4103, SITE_ERRORS[4103]),
    ]


def test_gated_executor_launches_only_client_apps_through_the_gate(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import (
        ExecutionSpec,
        LaunchResultStatus,
    )

    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **_k: started.append(args))
    executor = approval_gate._gated_executor_class(site_toml)()

    def spec(kind: TaskType) -> ExecutionSpec:
        return ExecutionSpec(
            task_type=kind,
            runtime_api_address="127.0.0.1:9094",
            token="ab" * 16,
            insecure=True,
            root_certificates_path=None,
            runtime_dependency_install=False,
            parent_pid=123,
            suppress_output=False,
            task_id=1,
        )

    assert (
        executor.launch(spec(TaskType.SERVER_APP)).status == LaunchResultStatus.FAILED
    )
    assert started == []
    assert (
        executor.launch(spec(TaskType.CLIENT_APP)).status == LaunchResultStatus.ACCEPTED
    )
    [args] = started
    assert args[1:4] == ["-m", "slidefed.deploy.approval_gate", "clientapp"]
    assert args[args.index("--site-config") + 1] == str(site_toml)
    assert "--insecure" in args
