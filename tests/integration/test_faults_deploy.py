"""Faults, load and an oversized reply on a real federation on 127.0.0.1.

One coordinator (``slidefed server start``: flower-superlink with TLS and SuperNode
authentication) and three sites (``slidefed site start``: flower-supernode + the
approving executor) run as processes, each in its own session and with its own
``FLWR_HOME``; the module shares them, and each test leaves them all online.

- ``kill``: a site's node process group is SIGKILLed while it trains round 1; the
  round completes with the other two; the site is started again and trains later
  rounds.
- ``kill``/``restart``: the SuperLink's process group (with the ServerApp) is
  SIGKILLed while round 2 is in flight; it is started again on the same database;
  the run is submitted again with ``resume=true``: no round lost or run twice, no
  round charged twice in any site's ledger.
- ``oversized``: an app sends 32 MiB more than the model: a site's runtime blocks
  it (egress guard, 4003), and a node that runs the app without slidefed's runtime
  is rejected by the coordinator (``update_rejected``); the round goes on.
- ``load``: ten SuperNode processes (TLS, node auth) train up to three rounds; wall
  time and the peak resident memory of the ten node process trees are printed, and
  every update a site released is either aggregated or audited by the server as
  ``reply_lost``. Flower 1.42's SQLite state answers 500 under this load; the
  front turns it into a 503 that the nodes retry, and the ServerApp asks a silent
  site again; replies can still be lost (issue #15).

The figures go to docs/reliability.md; see them with ``pytest -s``. The module
raises each site's ``max_epsilon`` so that its runs all fit one budget.

Helpers come from :mod:`tests.integration.test_deploy`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slidefed.bench.memory import tree_rss_bytes
from slidefed.client.privacy.accountant import epsilon
from slidefed.client.privacy.ledger import PrivacyLedger, stable_run_id
from slidefed.common.crypto import generate_node_key
from slidefed.demo.synth import synth_site
from slidefed.deploy.site_node import free_port
from slidefed.simulation import write_app_dir
from tests.integration.test_deploy import (
    Federation,
    _health,
    _make_site,
    _wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

N_SITES = 3
LOAD_NODES = 10
# A deadline no healthy round comes near (a round costs nothing extra when every
# site answers): on 2 shared cores the kill drill's rounds took 51-78 s here, while
# a site restarts (imports, checks its slides) beside the others, and with 60 s a
# healthy site once missed CI's deadline, leaving a round under min-sites, which
# fails the run. A round waiting on a killed site ends on the SuperLink's answer
# for it ("Node Unavailable"), not on this deadline.
ROUND_TIMEOUT = 150
# Ten nodes share 2 cores: a round (training, then evaluation) took 200-205 s
# (each node starts its ClientApp and loads its features twice a round).
LOAD_ROUND_TIMEOUT = 300
APPS = Path(__file__).parent / "apps"


def _run_config(
    run_dir: Path,
    *,
    rounds: int,
    min_sites: int,
    extra: str = "",
    round_timeout: int = ROUND_TIMEOUT,
) -> str:
    return (
        f"num-server-rounds={rounds} min-sites={min_sites} local-epochs=1 "
        f"round-timeout={round_timeout} run-dir='{run_dir}' {extra}"
    ).strip()


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _server_audit(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "audit" / "server-audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _events(
    fed: Federation, site: Path, event: str, run_ids: set[int]
) -> list[dict[str, Any]]:
    return [
        r for r in fed.audit(site) if r["event"] == event and r["run_id"] in run_ids
    ]


def _report(text: str) -> None:
    """Figures for docs/reliability.md (shown with ``pytest -s``)."""
    print(text)  # noqa: T201 - the figures go to docs/reliability.md


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.is_file() else ""


def _failure(fed: Federation, run_id: int, superlink_log: str) -> str:
    """What a failed run left: the ServerApp's log, then the SuperLink's."""
    return (
        f"ServerApp log:\n{fed.run_log(run_id)}\n"
        f"SuperLink log:\n{_tail(fed.root / superlink_log)}"
    )


@dataclass
class Deployment:
    """The federation plus what the fault tests start, kill and restart."""

    fed: Federation
    config: Path
    app: Path
    superlink: subprocess.Popen[bytes] | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: Counter[str] = field(default_factory=Counter)

    def log(self, name: str) -> str:
        """Log name of the next start of ``name`` (restarts get their own log)."""
        count = self.starts[name]
        self.starts[name] += 1
        return name if not count else f"{name}-{count}"

    def start_superlink(self) -> None:
        self.superlink = self.fed.start(
            self.log("superlink"),
            "slidefed", "server", "start", "--config", str(self.config),
            home=self.fed.root / "unused",
        )  # fmt: skip

    def wait_superlink(self) -> None:
        _wait(
            "the SuperLink's /health over TLS",
            lambda: _health(self.fed.ca, self.fed.address),
            60,
            every=0.5,
        )

    def register(self, site: Path, public_key: Path | None = None) -> int:
        out = self.fed.run(
            "slidefed", "server", "register-site",
            str(public_key or site / "state" / "keys" / "node_key.pub"),
            "--name", site.name, "--config", str(self.config),
        )  # fmt: skip
        node_id = int(out.split(" as node ")[1].split(";")[0])
        self.fed.node_ids[site.name] = node_id
        return node_id

    def start_site(self, site: Path) -> None:
        self.nodes[site.name] = self.fed.start(
            self.log(site.name),
            "slidefed", "site", "start", "--config", str(site / "site.toml"),
            "--superlink", self.fed.address, "--ca", str(self.fed.ca),
            home=site / "cli-home",
        )  # fmt: skip

    def statuses(self) -> dict[int, str]:
        nodes = self.fed.flwr("supernode", "ls", "slidefed").get("nodes", [])
        return {int(n["node-id"]): str(n["status"]) for n in nodes}

    def wait_online(self, names: list[str], timeout: float = 90) -> None:
        ids = {self.fed.node_ids[n] for n in names}

        def ready() -> bool:
            for name in names:
                proc = self.nodes[name]
                if proc.poll() is not None:
                    pytest.fail(
                        f"{name}'s node exited with {proc.returncode}:\n"
                        + _tail(self.fed.root / f"{name}.log")
                    )
            status = self.statuses()
            return all(status.get(i) == "online" for i in ids)

        _wait(f"{len(names)} nodes online", ready, timeout, every=2)

    def wait_offline(self, name: str, timeout: float = 90) -> None:
        node = self.fed.node_ids[name]
        _wait(
            f"the SuperLink to see {name} offline",
            lambda: self.statuses().get(node) != "online",
            timeout,
            every=2,
        )

    def site_names(self) -> list[str]:
        return [s.name for s in self.fed.sites]


def _site_toml(name: str, data: str = "") -> str:
    return (
        f'[site]\nname = "{name}"\n{data}\n'
        "[policy]\nmin_eval_patients = 3\nmax_epsilon = 100.0\n"
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group (session) that ``proc`` leads."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("faults")
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
        for i in range(N_SITES):
            synth_site(root / f"site-{i}", patients=12, seed=i, width=1024, height=768)
        dep.start_superlink()
        with ThreadPoolExecutor(max_workers=N_SITES) as pool:
            fed.sites = list(
                pool.map(lambda i: _make_site(fed, i, app_hash), range(N_SITES))
            )
        for site in fed.sites:
            # The module's runs all train on these sites: room for all of them
            # in each site's privacy budget (the default max_epsilon holds one).
            (site / "site.toml").write_text(_site_toml(site.name))
        dep.wait_superlink()
        for site in fed.sites:
            dep.register(site)
        for site in fed.sites:
            dep.start_site(site)
        dep.wait_online(dep.site_names())
        yield dep
    finally:
        fed.stop_all()


# --------------------------------------------------------------- oversized
def _oversized_app(folder: Path) -> Path:
    """slidefed's ServerApp with the ClientApp of ``apps/oversized_app``."""
    write_app_dir(folder)
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text()
    text = text.replace('name = "slidefed-run"', 'name = "oversized-run"')
    text = text.replace(
        'clientapp = "slidefed.client.app:app"',
        'clientapp = "oversized_app.client:app"',
    )
    pyproject.write_text(text)
    shutil.copytree(
        APPS / "oversized_app",
        folder / "oversized_app",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return folder


def _start_rogue_node(dep: Deployment) -> subprocess.Popen[bytes]:
    """A registered node that runs apps itself, without slidefed's runtime."""
    fed = dep.fed
    rogue = fed.root / "rogue"
    (rogue / "flwr").mkdir(parents=True)
    (rogue / "site.toml").write_text('[site]\nname = "rogue"\n')
    (rogue / "OVERSIZE").write_text("")
    key = rogue / "node_key"
    generate_node_key(key)
    dep.register(rogue, key.with_name("node_key.pub"))
    proc = fed.start(
        "rogue",
        "flower-supernode", "--superlink", fed.address,
        "--root-certificates", str(fed.ca),
        "--auth-supernode-private-key", str(key),
        "--isolation", "subprocess", "--port", str(free_port()),
        "--node-config", f'site-config="{rogue / "site.toml"}"',
        home=rogue / "flwr",
    )  # fmt: skip
    dep.nodes["rogue"] = proc
    return proc


def test_oversized_reply_is_blocked_at_the_site_and_rejected_by_the_coordinator(
    deployment: Deployment,
) -> None:
    dep, fed = deployment, deployment.fed
    dep.wait_online(dep.site_names())
    app = _oversized_app(fed.root / "oversized-app")

    def approve(site: Path) -> str:
        toml = str(site / "site.toml")
        return fed.run(
            "slidefed", "site", "approve", "--config", toml, "--app-dir", str(app)
        )

    with ThreadPoolExecutor(max_workers=N_SITES) as pool:
        list(pool.map(approve, fed.sites))
    marked = fed.sites[0]
    (marked / "OVERSIZE").write_text("")
    rogue = _start_rogue_node(dep)
    run_dir = fed.root / "run-oversized"
    try:
        dep.wait_online([*dep.site_names(), "rogue"])
        run_id = fed.submit(app, _run_config(run_dir, rounds=1, min_sites=2))
        status = fed.wait_finished(
            run_id, timeout=ROUND_TIMEOUT + 120, output=run_dir / "run.json"
        )
    finally:
        (marked / "OVERSIZE").unlink()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rogue.pid, signal.SIGTERM)
        rogue.wait(timeout=30)
    assert status == "finished:completed", _failure(fed, run_id, "superlink.log")
    (row,) = _rows(run_dir)
    marked_node = str(fed.node_ids[marked.name])
    rogue_node = str(fed.node_ids["rogue"])
    _report(f"\noversized: round 1 in {row['seconds']} s; errors {row['errors']}")
    _report(f"oversized: rejected {row['rejected']}")
    # The two honest sites were aggregated; the round was not held up.
    assert row["sites_trained"] == 2
    # At the site: slidefed's runtime replaced the reply, nothing of it left.
    assert any(
        e["node"] == marked_node and "egress guard blocked" in e["reason"]
        for e in row["errors"]
    ), row["errors"]
    blocked = _events(fed, marked, "egress_blocked", {run_id})
    assert len(blocked) == 1, fed.audit(marked)
    assert not _events(fed, marked, "update_released", {run_id})
    # At the coordinator: the rogue node's reply reached the ServerApp, which
    # rejected it against the model's arrays before aggregation.
    rejected = {r["node"]: r["reason"] for r in row["rejected"]}
    assert "array names differ" in rejected[rogue_node]
    audited = [
        r
        for r in _server_audit(run_dir)
        if r["event"] == "update_rejected" and r["data"]["node"] == rogue_node
    ]
    assert len(audited) == 1
    assert row["bytes_in"] < 1024 * 1024  # the 32 MiB never entered the aggregate
    # The coordinator is unaffected: still up, and the honest sites released.
    assert dep.superlink is not None
    assert dep.superlink.poll() is None
    for site in fed.sites[1:]:
        assert [
            r["round"] for r in _events(fed, site, "update_released", {run_id})
        ] == [1]
    dep.wait_offline("rogue", timeout=30)


# ------------------------------------------------------------ kill a node
def test_kill_supernode_mid_round_then_restart_rejoins_a_later_round(
    deployment: Deployment,
) -> None:
    dep, fed = deployment, deployment.fed
    dep.wait_online(dep.site_names())
    victim = fed.sites[2]
    run_dir = fed.root / "run-kill-node"
    rounds = 3
    run_id = fed.submit(dep.app, _run_config(run_dir, rounds=rounds, min_sites=2))
    _wait(
        f"{victim.name} to charge round 1",
        lambda: _events(fed, victim, "round_charged", {run_id}),
        240,
        every=0.5,
    )
    _kill_group(dep.nodes[victim.name])
    killed = time.monotonic()
    _wait(
        "round 1 to complete without the killed site",
        lambda: _rows(run_dir),
        ROUND_TIMEOUT + 120,
    )
    round1_after_kill = time.monotonic() - killed
    # The SuperLink refuses a node id that it still holds online: restart the
    # site once Flower's heartbeat (2 x 30 s) has lapsed.
    dep.wait_offline(victim.name)
    offline_after_kill = time.monotonic() - killed
    dep.start_site(victim)
    dep.wait_online([victim.name])
    back_after_kill = time.monotonic() - killed
    status = fed.wait_finished(
        run_id, timeout=rounds * ROUND_TIMEOUT + 60, output=run_dir / "run.json"
    )
    assert status == "finished:completed", _failure(fed, run_id, "superlink.log")
    rows = _rows(run_dir)
    _report(
        f"\nkill node: round 1 ended {round1_after_kill:.0f} s after the kill; "
        f"node offline after {offline_after_kill:.0f} s, back online after "
        f"{back_after_kill:.0f} s; sites per round "
        f"{[r['sites_trained'] for r in rows]}, seconds {[r['seconds'] for r in rows]}"
    )
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    victim_node = str(fed.node_ids[victim.name])
    # Only the killed site may be missing: Flower answers for it (from the
    # SuperLink, "Node Unavailable") once its heartbeat has lapsed.
    others = [
        e
        for r in rows
        for e in r["errors"]
        if e["node"] != victim_node and "Node Unavailable" not in e["reason"]
    ]
    assert not others, others
    assert rows[0]["sites_trained"] == 2
    assert any(r["sites_trained"] == N_SITES for r in rows[1:])
    rejoined = sorted(
        r["round"] for r in _events(fed, victim, "update_released", {run_id})
    )
    assert rejoined, fed.audit(victim)
    assert any(r > 1 for r in rejoined), rejoined
    # Back online, the site may still find round 1's instruction (asked again
    # while it was down): it answers with the same release, never charged twice.
    charged = [r["round"] for r in _events(fed, victim, "round_charged", {run_id})]
    assert len(charged) == len(set(charged)), charged
    assert rows[-1]["sites_trained"] == N_SITES
    for site in fed.sites[:2]:
        # A healthy site slow to answer may be asked again within a round: it
        # answers from its stored release (same bytes, ``round_replayed``), and
        # is charged once per round.
        released = _events(fed, site, "update_released", {run_id})
        assert sorted({r["round"] for r in released}) == list(range(1, rounds + 1))
        for rnd in range(1, rounds + 1):
            shas = {r["data"]["sha256"] for r in released if r["round"] == rnd}
            assert len(shas) == 1, (site.name, rnd, shas)
        charged = [r["round"] for r in _events(fed, site, "round_charged", {run_id})]
        assert charged == list(range(1, rounds + 1)), (site.name, charged)
        replayed = Counter(
            r["round"] for r in _events(fed, site, "round_replayed", {run_id})
        )
        # Every repeat of a release is a replay (evaluation replays count there too).
        extra = Counter(r["round"] for r in released) - Counter(charged)
        assert all(replayed[rnd] >= n for rnd, n in extra.items()), (
            site.name,
            extra,
            replayed,
        )


# ------------------------------------------------------- kill the SuperLink
def test_kill_superlink_and_restart_resumes_without_loss_or_double_charge(
    deployment: Deployment,
) -> None:
    dep, fed = deployment, deployment.fed
    names = dep.site_names()
    dep.wait_online(names)
    run_dir = fed.root / "run-restart"
    name = "restart-drill"
    rounds = 3
    config = _run_config(
        run_dir, rounds=rounds, min_sites=N_SITES, extra=f"run-name='{name}'"
    )
    first = fed.submit(dep.app, config)

    def round_two_in_flight() -> list[Path]:
        if not (run_dir / "checkpoints" / "round-1.json").is_file():
            return []
        return [
            s
            for s in fed.sites
            if any(r["round"] == 2 for r in _events(fed, s, "round_charged", {first}))
        ]

    charged_before = _wait("round 2 in flight", round_two_in_flight, 300, every=0.5)
    assert dep.superlink is not None
    _kill_group(dep.superlink)
    killed = time.monotonic()
    checkpoint = max(
        int(p.stem.split("-")[1].split(".")[0])
        for p in (run_dir / "checkpoints").glob("round-*.json")
    )
    dep.start_superlink()
    dep.wait_superlink()
    up_after = time.monotonic() - killed
    # The sites' nodes keep retrying; a node whose process gave up is started again.
    restarted = []
    for site in fed.sites:
        if dep.nodes[site.name].poll() is not None:
            restarted.append(site.name)
            dep.start_site(site)
    dep.wait_online(names, timeout=150)
    online_after = time.monotonic() - killed
    second = fed.submit(dep.app, f"{config} resume=true")
    status = fed.wait_finished(
        second, timeout=rounds * ROUND_TIMEOUT + 60, output=run_dir / "run.json"
    )
    total = time.monotonic() - killed
    _report(
        f"\nkill SuperLink: killed after the round-{checkpoint} checkpoint with round 2 "
        f"charged at {[s.name for s in charged_before]}; SuperLink up after "
        f"{up_after:.0f} s, all nodes online after {online_after:.0f} s "
        f"(restarted: {restarted or 'none'}); resumed run done {total:.0f} s after "
        "the kill"
    )
    assert status == "finished:completed", _failure(fed, second, "superlink-1.log")
    _report(f"kill SuperLink: the killed run {first} is now {fed.status(first)!r}")
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    audit = _server_audit(run_dir)
    resumed = [r for r in audit if r["event"] == "run_resumed"]
    assert [r["round"] for r in resumed] == [checkpoint]
    completed = sorted(r["round"] for r in audit if r["event"] == "round_completed")
    assert completed == list(range(1, rounds + 1))  # none lost, none run twice
    ledger_run = stable_run_id(name)
    runs = {first, second}
    for site in fed.sites:
        ledger = PrivacyLedger(site / "state" / "ledger.json").load()
        mine = [
            r for r in ledger.rounds if r.run_id == ledger_run and r.kind == "train"
        ]
        assert sorted(r.round for r in mine) == list(range(1, rounds + 1)), site
        charged = Counter(r["round"] for r in _events(fed, site, "round_charged", runs))
        assert charged == Counter(range(1, rounds + 1)), (site.name, charged)
        # A round charged before the kill and asked again after it is a replay.
        in_flight = {
            r["round"] for r in _events(fed, site, "round_charged", {first})
        } - set(range(1, checkpoint + 1))
        replayed = {r["round"] for r in _events(fed, site, "round_replayed", {second})}
        assert replayed == in_flight, (site.name, replayed, in_flight)
        # The epsilon the site reports is that of its whole ledger history.
        assert ledger.delta is not None
        total_eps = epsilon(
            ledger.history(), ledger.delta, accountant=ledger.accountant
        )
        last = _events(fed, site, "update_released", {second})[-1]
        assert last["round"] == rounds
        # The last update reports the history up to its own charge; evaluations
        # charged after it are in the ledger's last entries.
        assert abs(last["data"]["metrics"]["epsilon"] - mine[-1].epsilon_after) < 1e-9
        assert abs(ledger.rounds[-1].epsilon_after - total_eps) < 1e-9
        # A replayed round releases the very same update as before the kill.
        before = {
            r["round"]: r["data"]["sha256"]
            for r in _events(fed, site, "update_released", {first})
        }
        after = {
            r["round"]: r["data"]["sha256"]
            for r in _events(fed, site, "update_released", {second})
        }
        for rnd in set(before) & set(after):
            assert before[rnd] == after[rnd], (site.name, rnd)


# ------------------------------------------------------------------- load
def _load_site(dep: Deployment, base: Path, folder: Path) -> Path:
    """A site that reads ``base``'s slides, with a copy of its feature cache."""
    folder.mkdir()
    toml = folder / "site.toml"
    data = f'manifest = "{base / "manifest.csv"}"\nslides_root = "{base}"\n'
    toml.write_text(_site_toml(folder.name, data))
    shutil.copytree(base / "state" / "cache", folder / "state" / "cache")
    dep.fed.run("slidefed", "site", "node-key", "--config", str(toml))
    dep.fed.run(
        "slidefed", "site", "approve", "--config", str(toml), "--app-dir", str(dep.app)
    )
    return folder


def _session_rss(sessions: set[int]) -> int:
    """Resident bytes of every process in ``sessions`` (one pass over /proc).

    Each node was started in its own session, so its session holds its whole
    process tree: ``site start``, flower-supernode, the executor and the ClientApp
    processes it spawns.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, pgrp, session, ... rss is field 24 of 52.
        if int(fields[3]) in sessions:
            total += int(fields[21]) * page
    return total


class _PeakRss:
    """Samples the summed resident memory of some sessions in a thread."""

    def __init__(self, sessions: set[int], interval: float = 2.0) -> None:
        self.sessions = sessions
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _session_rss(self.sessions))
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


LOAD_ROUNDS = 3


@dataclass
class LoadRun:
    """What the ten-node run did, for the two load tests."""

    names: list[str]
    sites: list[Path]
    run_id: int
    status: str
    rows: list[dict[str, Any]]
    seconds: float
    idle_bytes: int
    peak_bytes: int


@pytest.fixture(scope="module")
def load_run(deployment: Deployment) -> LoadRun:
    """Seven more sites (the first site's slides and a copy of its features), then
    ten nodes train three rounds while their memory is sampled."""
    dep, fed = deployment, deployment.fed
    dep.wait_online(dep.site_names())
    base = fed.sites[0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        extra = list(
            pool.map(
                lambda k: _load_site(dep, base, fed.root / f"load-{k}"),
                range(N_SITES, LOAD_NODES),
            )
        )
    for site in extra:
        dep.register(site)
    for site in extra:
        dep.start_site(site)
    sites = [*fed.sites, *extra]
    names = [s.name for s in sites]
    dep.wait_online(names, timeout=180)
    pids = [dep.nodes[n].pid for n in names]
    # The sampler agrees with slidefed's own tree measure on the idle nodes.
    idle = sum(tree_rss_bytes(pid) for pid in pids)
    assert abs(_session_rss(set(pids)) - idle) < 0.2 * idle
    run_dir = fed.root / "run-load"
    start = time.monotonic()
    with _PeakRss(set(pids)) as peak:
        run_id = fed.submit(
            dep.app,
            _run_config(
                run_dir,
                rounds=LOAD_ROUNDS,
                min_sites=LOAD_NODES,
                round_timeout=LOAD_ROUND_TIMEOUT,
            ),
        )
        status = fed.wait_finished(run_id, timeout=900, output=run_dir / "run.json")
    result = LoadRun(
        names=names,
        sites=sites,
        run_id=run_id,
        status=status,
        rows=_rows(run_dir),
        seconds=time.monotonic() - start,
        idle_bytes=idle,
        peak_bytes=peak.peak,
    )
    mib = 1024 * 1024
    _report(
        f"\nload: {LOAD_NODES} SuperNodes (TLS + node auth), {LOAD_ROUNDS} rounds in "
        f"{result.seconds:.0f} s (submit to finished); per round "
        f"{[(r['seconds'], r['sites_trained'], r['sites_evaluated']) for r in result.rows]}"
        f" (seconds, trained, evaluated); node trees idle {idle / mib:.0f} MiB, "
        f"peak {peak.peak / mib:.0f} MiB ({peak.peak / LOAD_NODES / mib:.0f} MiB "
        f"per node); errors {[e['reason'][:60] for r in result.rows for e in r['errors']]}"
    )
    return result


def test_load_ten_supernodes_every_charged_update_is_aggregated_or_audited_lost(
    deployment: Deployment, load_run: LoadRun
) -> None:
    """Nothing a site was charged for is lost, and no round runs past its timeout.

    Every update a site released (and was charged for) reached the global model:
    re-delivered from the stored release when a reply was lost on the way (the same
    SHA-256), never missing. A lost reply would be named in the server's audit log
    (``reply_lost``); at ten nodes there must be none.
    """
    fed = deployment.fed
    server = _server_audit(Path(fed.root / "run-load"))
    aggregated = {
        r["data"]["sha256"] for r in server if r["event"] == "update_aggregated"
    }
    lost = [
        (r["data"]["node"], r["round"])
        for r in server
        if r["event"] == "reply_lost" and r["data"]["stage"] == "train"
    ]
    assert load_run.status == "finished:completed", load_run.status
    assert lost == []
    assert [r["sites_trained"] for r in load_run.rows] == [LOAD_NODES] * LOAD_ROUNDS
    # A round's stages share its timeout; the row adds aggregation and the checkpoint.
    assert all(r["seconds"] <= LOAD_ROUND_TIMEOUT + 15 for r in load_run.rows)
    released = set()
    for site in load_run.sites:
        for r in _events(fed, site, "update_released", {load_run.run_id}):
            released.add((site.name, r["round"]))
            assert r["data"]["sha256"] in aggregated, (site.name, r["round"])
    assert len(released) == LOAD_NODES * LOAD_ROUNDS
    assert load_run.peak_bytes > load_run.idle_bytes > 0
