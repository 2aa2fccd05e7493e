"""A hostile ClientApp cannot send free text in an error reply.

The handlers below are an approved app turned hostile: they answer a coordinator's
instruction (built as a coordinator sends it) with a patient id in the error's
reason, with a code outside the site's table, or by raising an exception whose
name and text carry one. Each is wrapped in the site's guard, both as slidefed's
ClientApp attaches it and as the site's runtime puts it around any app; what leaves
must be exactly an entry of the site's table, and a blocked reply is audited.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from slidefed.client.config import load_site_config
from slidefed.client.egress import egress_guard_mod
from slidefed.common.site_errors import SITE_ERRORS, SiteError, site_error_message
from slidefed.deploy import approval_gate
from tests.client.messages import instruction, keyed_site, node_context

Handler = Callable[[Message, Context], Message]
Wrapped = Callable[[Message, Context], Message]

ENTRY_BLOCKED = (int(SiteError.EGRESS_BLOCKED), SITE_ERRORS[SiteError.EGRESS_BLOCKED])
ENTRY_EXCEPTION = (
    int(SiteError.APP_EXCEPTION),
    "the ClientApp raised an exception; details are in the site log",
)


class PatientP123(Exception):
    """An exception type named after a patient, by whoever wrote the app."""


@pytest.fixture
def site_toml(tmp_path: Path) -> Path:
    return keyed_site(tmp_path, "hostile-app-test")


def _with_app_mod(handler: Handler, _monkeypatch: pytest.MonkeyPatch) -> Wrapped:
    """The guard as slidefed's ClientApp attaches it."""
    app = ClientApp(mods=[egress_guard_mod])
    app.train()(handler)
    return app


def _with_site_runtime(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> Wrapped:
    """The guard as the site's runtime puts it around an approved app (no mods)."""
    rc: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    foreign = ClientApp()
    foreign.train()(handler)
    monkeypatch.setattr(rc, "get_load_client_app_fn", lambda **_k: lambda *_a: foreign)
    monkeypatch.setattr(rc, "push_message", rc.push_message)  # restored after
    monkeypatch.setattr(rc, "pull_task_input", rc.pull_task_input)
    monkeypatch.setattr(rc, "install_from_fab", rc.install_from_fab)
    approval_gate._install_hooks(Path("unused-site.toml"))
    loaded = rc.get_load_client_app_fn(
        default_app_ref="", app_path=None, multi_app=True
    )("fab-id", "1.0", "hash")

    def call(message: Message, context: Context) -> Message:
        return loaded(message=message, context=context)  # type: ignore[no-any-return]

    return call


WRAPPINGS = pytest.mark.parametrize(
    "wrap", [_with_app_mod, _with_site_runtime], ids=["app-mod", "site-runtime"]
)


def _leaves(reply: Message) -> tuple[int, str]:
    assert reply.has_error()
    assert not reply.has_content()
    return int(reply.error.code), str(reply.error.reason)


def _audit(site_toml: Path) -> list[dict[str, Any]]:
    path = load_site_config(site_toml).audit_path
    return (
        [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    )


@WRAPPINGS
def test_a_patient_id_in_the_reason_of_a_table_code_does_not_leave(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch, wrap: Any
) -> None:
    def hostile(msg: Message, _ctx: Context) -> Message:
        return Message(
            Error(code=SiteError.BUDGET, reason="patient P-123"), reply_to=msg
        )

    reply = wrap(hostile, monkeypatch)(instruction("train", 2), node_context(site_toml))

    assert _leaves(reply) == ENTRY_BLOCKED
    [record] = _audit(site_toml)
    assert record["event"] == "egress_blocked"
    assert record["round"] == 2
    assert record["data"]["rule"] == "error reply not in the site's table of errors"
    assert "reason of 13 characters" in record["data"]["detail"]
    assert "P-123" not in json.dumps(record)


@WRAPPINGS
def test_a_code_outside_the_table_does_not_leave(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch, wrap: Any
) -> None:
    # A code can carry data as well as a reason can (patient 123, say); the text
    # is the table's, so only the code is wrong.
    def hostile(msg: Message, _ctx: Context) -> Message:
        reason = site_error_message(SiteError.REFUSED)
        return Message(Error(code=4123, reason=reason), reply_to=msg)

    reply = wrap(hostile, monkeypatch)(instruction("train", 1), node_context(site_toml))

    assert _leaves(reply) == ENTRY_BLOCKED
    [record] = _audit(site_toml)
    assert record["data"]["detail"].startswith("a code not in the table;")
    assert "4123" not in record["data"]["detail"]


@WRAPPINGS
def test_an_exception_leaves_without_its_type_or_text(
    site_toml: Path,
    monkeypatch: pytest.MonkeyPatch,
    wrap: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hostile(_msg: Message, _ctx: Context) -> Message:
        raise PatientP123("slide of patient P-123 is corrupt")

    reply = wrap(hostile, monkeypatch)(instruction("train", 1), node_context(site_toml))

    code, reason = _leaves(reply)
    assert (code, reason) == ENTRY_EXCEPTION
    assert "P123" not in reason
    assert "P-123" not in reason
    # The type name stays at the site, in its log.
    assert "PatientP123" in caplog.text


@pytest.mark.parametrize(
    "reason",
    [
        site_error_message(SiteError.BUDGET) + " ",  # one character appended
        site_error_message(SiteError.BUDGET).upper(),
        site_error_message(SiteError.LEDGER_CHECK_FAILED),  # another code's text
        "",
    ],
    ids=["appended", "case", "other-entry", "empty"],
)
def test_only_a_code_with_its_own_text_character_for_character_leaves(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    def hostile(msg: Message, _ctx: Context) -> Message:
        return Message(Error(code=SiteError.BUDGET, reason=reason), reply_to=msg)

    app = _with_app_mod(hostile, monkeypatch)
    reply = app(instruction("train", 1), node_context(site_toml))
    assert _leaves(reply) == ENTRY_BLOCKED


def test_a_table_entry_leaves_unchanged_and_unaudited(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = SiteError.LEDGER_CHECK_FAILED

    def refusing(msg: Message, _ctx: Context) -> Message:
        return Message(
            Error(code=entry, reason=site_error_message(entry)), reply_to=msg
        )

    app = _with_app_mod(refusing, monkeypatch)
    reply = app(instruction("train", 1), node_context(site_toml))
    assert _leaves(reply) == (4103, "refused: ledger check failed")
    assert _audit(site_toml) == []
