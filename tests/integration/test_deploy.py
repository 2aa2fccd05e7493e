"""A real federation on 127.0.0.1: TLS, SuperNode authentication, code approval.

One coordinator (``slidefed server init/start/register-site``) and three sites
(``slidefed site start``: flower-supernode + the approving executor) run as real
processes, each in its own session and with its own ``FLWR_HOME``; the module shares
them. The app is built with ``slidefed app build`` and approved by its hash, as the
guides say; the training run is launched with ``slidefed launch``, other runs are
submitted with ``flwr run`` and judged by ``flwr ls`` (``flwr run`` exits 0 even when
a run fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slidefed.common.crypto import generate_audit_key, generate_node_key
from slidefed.common.pki import ensure_ca
from slidefed.demo.synth import synth_site
from slidefed.deploy.site_node import free_port
from tests.audit.builders import resign_log

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
N_SITES = 3
ROUNDS = 2

PROBE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "probe-app"
version = "0.0.1"

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "probe.server:app"
clientapp = "probe.client:app"

[tool.flwr.app.config]
out = ""
nodes = 3
"""

# Importing this module is running the app's code: it leaves a mark in the state
# folder of the site that ran it (FLWR_HOME is <state>/flwr there).
PROBE_CLIENT = """\
import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

Path(os.environ["FLWR_HOME"]).parent.joinpath("probe-app-ran").write_text("ran")

app = ClientApp()  # attaches no egress guard of its own


@app.train()
def train(msg, context):
    tile = np.zeros((224, 224, 3), dtype=np.uint8)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"tile": Array(tile)}),
            "config": ConfigRecord({"patient_id": "P-000417"}),
        }
    )
    return Message(content, reply_to=msg)
"""

PROBE_SERVER = """\
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    want = int(context.run_config["nodes"])
    deadline = time.monotonic() + 60
    nodes = list(grid.get_node_ids())
    while len(nodes) < want and time.monotonic() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"server-round": 1})}),
            dst_node_id=node,
            message_type="train",
        )
        for node in nodes
    ]
    replies = grid.send_and_receive(messages, timeout=120)
    rows = [
        {
            "node": r.metadata.src_node_id,
            "code": r.error.code if r.has_error() else 0,
            "reason": r.error.reason if r.has_error() else "",
        }
        for r in replies
    ]
    Path(str(context.run_config["out"])).write_text(json.dumps(rows))
"""


def _wait(
    what: str, check: Callable[[], Any], timeout: float, every: float = 1.0
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Federation:
    root: Path
    port: int
    coord: Path
    sites: list[Path]
    node_ids: dict[str, int]
    app_hash: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.coord / "pki" / "ca.crt"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, flwr_home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            FLWR_HOME=str(flwr_home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        )
        return env

    def run(self, *argv: str, home: Path | None = None, timeout: float = 120) -> str:
        """Run a command to completion; fail the test on a non-zero exit."""
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            env=self.env(home or self.root / "cli-home"),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *argv: str, home: Path) -> subprocess.Popen[bytes]:
        """Start a long-running process in its own session, logging to a file."""
        log = (self.root / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            env=self.env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
        )
        self.procs.append(proc)
        return proc

    def flwr(self, *argv: str, timeout: float = 60) -> dict[str, Any]:
        """A ``flwr`` CLI command against the SuperLink, answer as JSON."""
        out = self.run(
            "flwr",
            *argv,
            "--format",
            "json",
            home=self.coord / "state" / "flwr",
            timeout=timeout,
        )
        data: dict[str, Any] = json.loads(out[out.index("{") :])
        return data

    def run_log(self, run_id: int, size: int = 6000) -> str:
        """The tail of the run's ServerApp log (``flwr log --show``), for failures."""
        done = subprocess.run(
            [str(BIN / "flwr"), "log", str(run_id), "slidefed", "--show"],
            env=self.env(self.coord / "state" / "flwr"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
            check=False,
        )
        return (done.stdout + done.stderr)[-size:]

    def online_nodes(self) -> int:
        nodes = self.flwr("supernode", "ls", "slidefed").get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")

    def submit(self, app: Path, run_config: str) -> int:
        answer = self.flwr("run", str(app), "slidefed", "--run-config", run_config)
        assert answer.get("success"), answer
        return int(answer["run-id"])

    def status(self, run_id: int) -> str:
        runs = self.flwr("ls", "slidefed", "--run-id", str(run_id)).get("runs", [])
        return str(runs[0]["status"]) if runs else ""

    def wait_finished(self, run_id: int, timeout: float, output: Path) -> str:
        """Wait for the run's last file, then for Flower's final status.

        Asking ``flwr ls`` costs a process; the file is polled every second and
        Flower only every 15 s (a failed run writes no file).
        """
        last = [time.monotonic()]

        def ended() -> bool:
            if output.exists():
                return True
            if time.monotonic() - last[0] < 15:
                return False
            last[0] = time.monotonic()
            return self.status(run_id).startswith("finished")

        _wait(f"run {run_id} to end", ended, timeout)

        def final() -> str | None:
            value = self.status(run_id)
            return value if value.startswith("finished") else None

        result: str = _wait(f"run {run_id}'s final status", final, 60, every=2)
        return result

    def online(self, count: int) -> bool:
        """Whether ``count`` site logs report a node id (then Flower is asked)."""
        logs = [self.root / f"{s.name}.log" for s in self.sites]
        accepted = sum(
            1 for log in logs if log.is_file() and b"SuperNode ID:" in log.read_bytes()
        )
        return accepted >= count and self.online_nodes() == count

    def audit(self, site: Path) -> list[dict[str, Any]]:
        path = site / "audit" / "audit.jsonl"
        return (
            [json.loads(line) for line in path.read_text().splitlines()]
            if path.is_file()
            else []
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Children that outlived their leader (same process group).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for log in self.logs:
            log.close()


def _health(ca: Path, address: str) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(
            f"https://{address}/health", context=context, timeout=2
        ) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _make_site(fed: Federation, index: int, app_hash: str) -> Path:
    """site init, site.toml, node key, app approval and prepared features."""
    folder = fed.root / f"site-{index}"
    toml = str(folder / "site.toml")
    fed.run("slidefed", "site", "init", str(folder), "--name", f"site-{index}")
    (folder / "site.toml").write_text(
        f'[site]\nname = "site-{index}"\n\n[policy]\nmin_eval_patients = 3\n'
    )
    fed.run("slidefed", "site", "node-key", "--config", toml)
    fed.run("slidefed", "site", "approve", "--config", toml, "--hash", app_hash)
    fed.run("slidefed", "site", "prepare", "--config", toml, timeout=180)
    return folder


def _bare_site(folder: Path) -> Path:
    """A site with a config and an audit key: 'site start' makes its node key."""
    folder.mkdir()
    (folder / "site.toml").write_text(f'[site]\nname = "{folder.name}"\n')
    generate_audit_key(folder / "state" / "keys" / "audit_key")
    return folder


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    port = free_port()
    coord = root / "coordinator"
    fed = Federation(root=root, port=port, coord=coord, sites=[], node_ids={})
    try:
        fed.run(
            "slidefed", "server", "init", str(coord), "--port", str(port),
            "--superlink-port", str(free_port()),
        )  # fmt: skip
        config = str(coord / "server.toml")
        # The researcher builds the app and sends its hash; each site approves it.
        built = fed.run(
            "slidefed", "app", "build", "--out", str(root / "slidefed-app"), "--json"
        )  # fmt: skip
        fed.app_hash = json.loads(built)["fab_hash"]
        for i in range(N_SITES):
            # Small slides keep preparation short (`slidefed synth site`'s generator).
            synth_site(root / f"site-{i}", patients=12, seed=i, width=1024, height=768)
        fed.start(
            "superlink", "slidefed", "server", "start", "--config", config,
            home=root / "unused",
        )  # fmt: skip
        # The sites set themselves up side by side while the SuperLink starts.
        with ThreadPoolExecutor(max_workers=N_SITES) as pool:
            fed.sites = list(
                pool.map(lambda i: _make_site(fed, i, fed.app_hash), range(N_SITES))
            )
        _wait(
            "the SuperLink's /health over TLS", lambda: _health(fed.ca, fed.address), 60
        )
        for site in fed.sites:
            out = fed.run(
                "slidefed", "server", "register-site",
                str(site / "state" / "keys" / "node_key.pub"),
                "--name", site.name, "--config", config,
            )  # fmt: skip
            fed.node_ids[site.name] = int(out.split(" as node ")[1].split(";")[0])
        for site in fed.sites:
            fed.start(
                site.name,
                "slidefed", "site", "start", "--config", str(site / "site.toml"),
                "--superlink", fed.address, "--ca", str(fed.ca),
                home=site / "cli-home",
            )  # fmt: skip
        _wait("three sites online", lambda: fed.online(N_SITES), 90)
        yield fed
    finally:
        fed.stop_all()


@pytest.fixture(scope="module")
def training_run(federation: Federation) -> tuple[int, str]:
    """The run, launched as the researcher guide says; ``launch.out`` keeps its output.

    ``slidefed launch`` exits 0 only when Flower reports ``finished:completed``.
    """
    run_dir = federation.root / "run"
    out = federation.run(
        "slidefed", "launch", "slidefed", "--app", str(federation.root / "slidefed-app"),
        "--run-config",
        f"num-server-rounds={ROUNDS} min-sites={N_SITES} local-epochs=1 "
        f"run-dir='{run_dir}' run-name='deploy-test'",
        home=federation.coord / "state" / "flwr",
        timeout=900,  # two rounds of three sites on a busy machine
    )  # fmt: skip
    (federation.root / "launch.out").write_text(out)
    last = out.strip().splitlines()[-1]
    assert last.endswith(" completed"), out
    return int(last.split()[1]), "finished:completed"


@pytest.fixture(scope="module")
def probe_run(
    federation: Federation, training_run: tuple[int, str]
) -> list[dict[str, Any]]:
    """An app that only site-0 approves: it returns a tile image and a patient id."""
    app = federation.root / "probe-app"
    (app / "probe").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PROBE_PYPROJECT)
    (app / "probe" / "__init__.py").write_text("")
    (app / "probe" / "client.py").write_text(PROBE_CLIENT)
    (app / "probe" / "server.py").write_text(PROBE_SERVER)
    first = federation.sites[0] / "site.toml"
    federation.run(
        "slidefed", "site", "approve", "--config", str(first), "--app-dir", str(app)
    )
    out = federation.root / "probe-replies.json"
    run_id = federation.submit(app, f"out='{out}' nodes={N_SITES}")
    federation.wait_finished(run_id, timeout=150, output=out)
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def test_tls_node_auth_federation_completes_two_rounds(
    federation: Federation, training_run: tuple[int, str]
) -> None:
    run_id, status = training_run
    assert status == "finished:completed", (
        federation.root / "superlink.log"
    ).read_text()[-4000:]
    rows = [
        json.loads(x)
        for x in (federation.root / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    # The plot and the model card name the registered sites.
    names = json.loads((federation.root / "run" / "site-names.json").read_text())
    assert names == {str(node): name for name, node in federation.node_ids.items()}
    card = (federation.root / "run" / "model-card.md").read_text()
    assert all(f"| {name} | {node} | " in card for node, name in names.items())
    for site in federation.sites:
        events = [r for r in federation.audit(site) if r["run_id"] == run_id]
        released = sorted(r["round"] for r in events if r["event"] == "update_released")
        assert released == list(range(1, ROUNDS + 1)), (
            site.name,
            [e["event"] for e in events],
        )
        assert not [
            r for r in events if r["event"] in ("egress_blocked", "app_refused")
        ]
        # The site audits the app its gate let run, under the run's name.
        (joined,) = [r for r in events if r["event"] == "run_joined"]
        assert joined["data"]["fab_hash"] == federation.app_hash
        assert joined["data"]["run_name"] == "deploy-test"
        federation.run(
            "slidefed", "audit", "verify", str(site / "audit" / "audit.jsonl")
        )


def test_launch_submits_the_built_app_and_prints_each_round(
    federation: Federation, training_run: tuple[int, str]
) -> None:
    run_id, _ = training_run
    out = (federation.root / "launch.out").read_text().splitlines()
    assert out[0].startswith(f"submitting app {federation.app_hash} ")
    rounds = [line for line in out if line.startswith("round ")]
    assert [line.split(":")[0] for line in rounds] == [
        f"round {r}/{ROUNDS}" for r in range(1, ROUNDS + 1)
    ], out
    assert all(f": {N_SITES} sites trained, " in line for line in rounds), rounds
    # Flower's run log holds slidefed's round lines, and the sites' epsilons only
    # as their maximum, never as a mean.
    log = federation.run(
        "flwr", "log", str(run_id), "slidefed", "--show",
        home=federation.coord / "state" / "flwr",
    )  # fmt: skip
    assert f"slidefed round {ROUNDS}/{ROUNDS}: {N_SITES} sites trained" in log, log
    assert "'epsilon_max':" in log, log
    assert "'epsilon':" not in log
    assert "'delta':" not in log
    started = [
        json.loads(line)
        for line in (federation.root / "run" / "audit" / "server-audit.jsonl")
        .read_text()
        .splitlines()
        if '"run_started"' in line
    ]
    assert started[0]["data"]["fab_hash"] == federation.app_hash


def _process_tree(root: int) -> dict[int, tuple[str, int, str]]:
    """``pid -> (state, parent pid, name)`` of ``root`` and its descendants."""
    table: dict[int, tuple[str, int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, parent = text[text.rindex(")") + 2 :].split()[:2]
        table[int(stat.parent.name)] = (state, int(parent), name)
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, (_, up, _) in table.items():
            if up in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {pid: table[pid] for pid in tree if pid in table}


def _defunct(federation: Federation) -> list[str]:
    found = []
    for proc in federation.procs:
        tree = _process_tree(proc.pid)
        found += [
            f"{name} ({pid}) under {tree.get(ppid, ('', 0, '?'))[2]} ({ppid})"
            for pid, (state, ppid, name) in tree.items()
            if state == "Z"
        ]
    return found


def test_after_a_run_no_defunct_children_and_no_colour_codes_in_logs(
    federation: Federation, training_run: tuple[int, str]
) -> None:
    # The executors reap on their next poll of the task loop (every few seconds).
    deadline = time.monotonic() + 30
    while _defunct(federation) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _defunct(federation)
    for name in ["superlink", *(site.name for site in federation.sites)]:
        log = (federation.root / f"{name}.log").read_bytes()
        assert b"\x1b[" not in log, name
    # The executor's and the ClientApps' lines reach the site's log too.
    assert b"INFO" in (federation.root / f"{federation.sites[0].name}.log").read_bytes()


def test_audit_verify_with_the_pinned_keys_of_server_and_site_init(
    federation: Federation, training_run: tuple[int, str], tmp_path: Path
) -> None:
    run = federation.root / "run"
    # The run folder holds the public key only; the private one stays in state/.
    assert not list(run.rglob("*audit_key")), list(run.rglob("*key*"))
    keys = tmp_path / "trusted"
    keys.mkdir()
    shutil.copy(federation.coord / "state/keys/audit_key.pub", keys / "server.pub")
    for site in federation.sites:
        shutil.copy(site / "state/keys/audit_key.pub", keys / f"{site.name}.pub")
    logs = [str(s / "audit" / "audit.jsonl") for s in federation.sites]
    logs.append(str(run / "audit" / "server-audit.jsonl"))
    federation.run("slidefed", "audit", "verify", *logs, "--keys", str(keys))
    # A forger re-signs a copy of a site log with a fresh key and puts that key
    # beside it: the default verify is fooled (and says loudly it is unpinned),
    # the pinned one is not.
    forged = tmp_path / "forged" / "audit"
    shutil.copytree(federation.sites[0] / "audit", forged)
    forger = generate_audit_key(tmp_path / "forger" / "audit_key")
    resign_log(forged / "audit.jsonl", forger)
    shutil.copy(tmp_path / "forger" / "audit_key.pub", forged / "audit_key.pub")
    env = federation.env(federation.root / "cli-home")
    slidefed = str(BIN / "slidefed")
    unpinned = subprocess.run(
        [slidefed, "audit", "verify", str(forged / "audit.jsonl")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unpinned.returncode == 0, unpinned.stdout + unpinned.stderr
    assert "WARNING: no --keys given" in unpinned.stderr
    pinned = subprocess.run(
        [slidefed, "audit", "verify", str(forged / "audit.jsonl"), "--keys", str(keys)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert pinned.returncode == 1, pinned.stdout + pinned.stderr
    assert "unknown_key" in pinned.stdout


def _outsider_home(federation: Federation, name: str, *, ca: bool) -> Path:
    home = federation.root / name
    home.mkdir()
    roots = f'root-certificates = "{federation.ca}"\n' if ca else ""
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "x"\n[superlink.x]\naddress = "{federation.address}"'
        f"\n{roots}"
    )
    return home


def _outsider_flwr(federation: Federation, home: Path, *argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "flwr"), *argv, "--format", "json"],
        env=federation.env(home), capture_output=True, text=True, timeout=90,
        cwd=home,
    )  # fmt: skip
    out = done.stdout
    answer: dict[str, Any] = json.loads(out[out.index("{") :])
    return answer


def test_outsider_is_refused_the_control_api_on_the_public_address(
    federation: Federation, training_run: tuple[int, str]
) -> None:
    runs_before = len(federation.flwr("ls", "slidefed")["runs"])
    nodes_before = len(federation.flwr("supernode", "ls", "slidefed")["nodes"])
    home = _outsider_home(federation, "outsider-with-ca", ca=True)
    evil = federation.root / "evil-app"
    shutil.copytree(federation.root / "slidefed-app", evil)
    key = home / "evil_key"
    generate_node_key(key)
    for argv in (
        ("ls", "x"),
        ("run", str(evil), "x"),
        ("supernode", "register", f"{key}.pub", "x"),
        ("supernode", "ls", "x"),
    ):
        answer = _outsider_flwr(federation, home, *argv)
        assert answer["success"] is False, (argv, answer)
        assert "403" in json.dumps(answer), (argv, answer)
    # Without the CA and with certificate checks turned off, a raw client gets
    # no further: only the Fleet API and /health are forwarded.
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    for path in (
        "/v1/control/list-runs",
        "/v1/control/register-node",
        "/v1/runtime/acquire-task",
        "/docs",
        "/openapi.json",
    ):
        request = urllib.request.Request(
            f"https://{federation.address}{path}", data=b"", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, context=unverified, timeout=10)  # noqa: S310
        assert refused.value.code == 403, path
        refused.value.close()  # its response holds the connection
    # The operator, on the coordinator host, still reaches the Control API.
    assert len(federation.flwr("ls", "slidefed")["runs"]) == runs_before
    nodes = federation.flwr("supernode", "ls", "slidefed")["nodes"]
    assert len(nodes) == nodes_before
    # The sites reached the SuperLink through the front.
    front_log = federation.coord / "state" / "front" / "access.log"
    assert b"/v1/fleet/pull-messages" in front_log.read_bytes()


def test_tls_connections_are_encrypted_and_nodes_authenticated(
    federation: Federation,
) -> None:
    nodes = federation.flwr("supernode", "ls", "slidefed")["nodes"]
    assert {int(n["node-id"]) for n in nodes} == set(federation.node_ids.values())
    with pytest.raises(OSError):  # plain HTTP is not served
        urllib.request.urlopen(f"http://{federation.address}/health", timeout=3)


def test_auth_unregistered_site_key_cannot_join(federation: Federation) -> None:
    stranger = _bare_site(federation.root / "stranger")
    done = subprocess.run(
        [
            str(BIN / "slidefed"),
            "site",
            "start",
            "--config",
            str(stranger / "site.toml"),
            "--superlink",
            federation.address,
            "--ca",
            str(federation.ca),
            "--max-wait-time",
            "20",
        ],
        env=federation.env(stranger / "cli-home"),
        capture_output=True,
        text=True,
        timeout=90,
        start_new_session=True,
    )
    assert done.returncode != 0
    assert "does not know this site's node key" in done.stderr
    status = json.loads((stranger / "state" / "node-status.json").read_text())
    assert status["cause"] == "not_registered"
    assert federation.online_nodes() == N_SITES


def test_tls_client_without_the_ca_cannot_connect(federation: Federation) -> None:
    # A site given another CA refuses the SuperLink's certificate.
    foreign = federation.root / "foreign-ca"
    ensure_ca(foreign / "ca.crt", foreign / "ca.key")
    outsider = _bare_site(federation.root / "outsider")
    done = subprocess.run(
        [
            str(BIN / "slidefed"),
            "site",
            "start",
            "--config",
            str(outsider / "site.toml"),
            "--superlink",
            federation.address,
            "--ca",
            str(foreign / "ca.crt"),
            "--max-wait-time",
            "20",
        ],
        env=federation.env(federation.root / "foreign-home"),
        capture_output=True,
        text=True,
        timeout=90,
        start_new_session=True,
    )
    assert done.returncode != 0
    assert "certificate does not verify" in done.stderr
    # The flwr CLI without the CA (system roots only) cannot reach the Control API.
    home = federation.root / "no-ca-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "x"\n[superlink.x]\naddress = "{federation.address}"\n'
    )
    out = subprocess.run(
        [str(BIN / "flwr"), "ls", "x", "--format", "json"],
        env=federation.env(home),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert json.loads(out[out.index("{") :])["success"] is False
    # Nor can a plain HTTPS client.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"https://{federation.address}/health", timeout=3)
    assert federation.online_nodes() == N_SITES


def test_approv_unapproved_app_is_refused_before_any_of_its_code_runs(
    federation: Federation, probe_run: list[dict[str, Any]]
) -> None:
    by_node = {int(r["node"]): r for r in probe_run}
    assert len(by_node) == N_SITES
    for site in federation.sites[1:]:
        reply = by_node[federation.node_ids[site.name]]
        # Exactly the site's table entry: not Flower's text of the exception.
        assert (reply["code"], reply["reason"]) == (
            4102,
            "refused: app not approved by this site",
        )
        assert not (site / "state" / "probe-app-ran").exists()
        refused = [r for r in federation.audit(site) if r["event"] == "app_refused"]
        assert len(refused) == 1
        assert refused[0]["data"]["fab_id"] == "tests/probe-app"
        assert len(refused[0]["data"]["fab_hash"]) == 64
    # The site that approved it did run it: the mark proves the probe works.
    assert (federation.sites[0] / "state" / "probe-app-ran").exists()


def test_egress_site_runtime_stops_a_tile_image_and_a_patient_id(
    federation: Federation, probe_run: list[dict[str, Any]]
) -> None:
    site = federation.sites[0]
    reply = {int(r["node"]): r for r in probe_run}[federation.node_ids[site.name]]
    assert (reply["code"], reply["reason"]) == (4003, "egress guard blocked the reply")
    blocked = [r for r in federation.audit(site) if r["event"] == "egress_blocked"]
    assert len(blocked) == 1
    assert "P-000417" not in json.dumps(blocked[0])


def test_register_site_works_from_a_folder_holding_a_slidefed_folder(
    federation: Federation, tmp_path: Path
) -> None:
    # flwr takes a connection name that is also a folder here for an app path.
    here = tmp_path / "work"
    (here / "slidefed").mkdir(parents=True)
    (here / "slidefed" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    key = tmp_path / "spare_key"
    generate_node_key(key)
    done = subprocess.run(
        [
            str(BIN / "slidefed"), "server", "register-site", f"{key}.pub",
            "--name", "spare-site", "--config",
            str(federation.coord / "server.toml"),
        ],
        env=federation.env(federation.root / "cli-home"),
        capture_output=True, text=True, timeout=120, cwd=here,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered site spare-site as node" in done.stdout
