"""A reply dropped on purpose between a site and the coordinator is recovered.

One coordinator (``slidefed server start``: the front, flower-superlink with TLS
and node authentication) and two sites (``slidefed site start``). One site reaches
the coordinator through a small HTTPS proxy made here: it terminates TLS with a
certificate from the federation's own CA, forwards every Fleet API request to the
front as it came (node-auth headers included), and answers the site's first
``push-messages`` (its round-1 update) with a 500 instead of forwarding it, as
the SuperLink's SQLite state does under load. Flower's SuperNode does not retry a
500: the update never reaches the SuperLink.

The ServerApp asks the silent site again within round 1; the site answers from
its stored release. The round aggregates both sites, the site's ledger holds one
charge for the round, and ``slidefed audit verify --keys`` over the sites' and the
server's logs matches every aggregated update to a site release.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slidefed.client.privacy.ledger import PrivacyLedger, stable_run_id
from slidefed.common.pki import ensure_server_certificate
from slidefed.deploy.site_node import free_port
from tests.integration.test_deploy import Federation, _make_site
from tests.integration.test_faults_deploy import (
    Deployment,
    _events,
    _failure,
    _rows,
    _run_config,
    _server_audit,
    _site_toml,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PUSH_MESSAGES = "/v1/fleet/push-messages"
# Up to a minute per stage on 2 shared cores; the repeat waits up to 3x the
# slowest reply, so the round has room for one.
ROUND_TIMEOUT = 300


class DroppingProxy:
    """HTTPS proxy to the front that drops the first ``drops`` pushed replies."""

    def __init__(self, upstream: str, ca: Path, folder: Path, *, drops: int) -> None:
        cert, key = folder / "proxy.crt", folder / "proxy.key"
        ensure_server_certificate(
            ca,
            ca.with_suffix(".key"),
            cert,
            key,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
            common_name="fault-injecting proxy",
        )
        self.client = httpx.Client(
            base_url=f"https://{upstream}", verify=ssl.create_default_context(cafile=ca)
        )
        self.drops = drops
        self.seen: Counter[str] = Counter()
        self.dropped: list[str] = []
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", free_port()), self._handler()
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _drop(self, path: str) -> bool:
        with self._lock:
            self.seen[path] += 1
            if path == PUSH_MESSAGES and len(self.dropped) < self.drops:
                self.dropped.append(path)
                return True
            return False

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                if proxy._drop(self.path):
                    self._answer(500, b"dropped on purpose", "text/plain")
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                try:
                    upstream = proxy.client.request(
                        self.command, self.path, content=body, headers=headers
                    )
                except (httpx.HTTPError, RuntimeError):  # the front, or we, stopped
                    self._answer(502, b"front unreachable", "text/plain")
                    return
                kind = upstream.headers.get("content-type", "application/octet-stream")
                self._answer(upstream.status_code, upstream.content, kind)

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the node's own log shows what it sent."""

        return Handler

    def __enter__(self) -> DroppingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture(scope="module")
def dropped(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployment, DroppingProxy]]:
    from slidefed.demo.synth import synth_site

    root = tmp_path_factory.mktemp("dropped")
    port = free_port()
    coord = root / "coordinator"
    fed = Federation(root=root, port=port, coord=coord, sites=[], node_ids={})
    dep = Deployment(fed=fed, config=coord / "server.toml", app=root / "slidefed-app")
    try:
        fed.run(
            "slidefed", "server", "init", str(coord), "--port", str(port),
            "--superlink-port", str(free_port()),
        )  # fmt: skip
        # The researcher builds the app and sends its hash; each site approves it.
        built = fed.run("slidefed", "app", "build", "--out", str(dep.app), "--json")
        app_hash = json.loads(built)["fab_hash"]
        for i in range(2):
            synth_site(root / f"site-{i}", patients=12, seed=i, width=1024, height=768)
        dep.start_superlink()
        fed.sites = [_make_site(fed, i, app_hash) for i in range(2)]
        for site in fed.sites:
            (site / "site.toml").write_text(_site_toml(site.name))
        dep.wait_superlink()
        for site in fed.sites:
            dep.register(site)
        with DroppingProxy(fed.address, fed.ca, root, drops=1) as proxy:
            dep.start_site(fed.sites[0])
            victim = fed.sites[1]
            dep.nodes[victim.name] = fed.start(
                dep.log(victim.name),
                "slidefed", "site", "start", "--config", str(victim / "site.toml"),
                "--superlink", proxy.address, "--ca", str(fed.ca),
                home=victim / "cli-home",
            )  # fmt: skip
            dep.wait_online(dep.site_names())
            yield dep, proxy
    finally:
        fed.stop_all()


def test_a_reply_dropped_on_the_way_is_recovered_in_its_round_without_a_new_charge(
    dropped: tuple[Deployment, DroppingProxy], tmp_path: Path
) -> None:
    dep, proxy = dropped
    fed = dep.fed
    victim = fed.sites[1]
    run_dir = fed.root / "run-dropped"
    rounds, name = 2, "dropped-reply"
    config = _run_config(
        run_dir,
        rounds=rounds,
        min_sites=2,
        extra=f"run-name='{name}'",
        round_timeout=ROUND_TIMEOUT,
    )
    run_id = fed.submit(dep.app, config)
    status = fed.wait_finished(
        run_id, timeout=rounds * 2 * ROUND_TIMEOUT, output=run_dir / "run.json"
    )
    assert status == "finished:completed", _failure(fed, run_id, "superlink.log")

    # The fault happened: the victim's round-1 update went nowhere.
    assert proxy.dropped == [PUSH_MESSAGES], proxy.seen
    # ... and was recovered within round 1: both sites' updates aggregated.
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert [r["sites_trained"] for r in rows] == [2] * rounds, rows
    for row in rows:
        assert row["seconds"] < ROUND_TIMEOUT, row
    node = fed.node_ids[victim.name]
    audit = _server_audit(run_dir)
    asked = [r for r in audit if r["event"] == "reply_reasked"]
    assert any(r["round"] == 1 and r["data"]["node"] == str(node) for r in asked), asked
    assert not [r for r in audit if r["event"] == "reply_lost"]

    # One charge per round at the victim: the repeat was answered from the store.
    ledger = PrivacyLedger(victim / "state" / "ledger.json").load()
    mine = [
        r.round
        for r in ledger.rounds
        if r.run_id == stable_run_id(name) and r.kind == "train"
    ]
    assert sorted(mine) == list(range(1, rounds + 1)), mine
    charged = Counter(
        r["round"] for r in _events(fed, victim, "round_charged", {run_id})
    )
    assert charged == Counter(range(1, rounds + 1)), charged
    replayed = [r["round"] for r in _events(fed, victim, "round_replayed", {run_id})]
    # The repeat was answered from the store (so is any other repeat the
    # ServerApp sent while the site was slow to answer).
    assert 1 in replayed, replayed
    released = _events(fed, victim, "update_released", {run_id})
    first = {r["data"]["sha256"] for r in released if r["round"] == 1}
    assert len(first) == 1, released  # the same bytes, sent twice

    # The auditor's cross-check: every aggregated update is a site release.
    keys = tmp_path / "trusted"
    keys.mkdir()
    shutil.copy(fed.coord / "state/keys/audit_key.pub", keys / "server.pub")
    for site in fed.sites:
        shutil.copy(site / "state/keys/audit_key.pub", keys / f"{site.name}.pub")
    logs = [str(s / "audit" / "audit.jsonl") for s in fed.sites]
    logs.append(str(run_dir / "audit" / "server-audit.jsonl"))
    out = fed.run("slidefed", "audit", "verify", *logs, "--keys", str(keys), "--json")
    result = json.loads(out[out.index("{") :])
    assert result["ok"], result
    aggregated = [r for r in audit if r["event"] == "update_aggregated"]
    assert len(aggregated) == 2 * rounds, aggregated
