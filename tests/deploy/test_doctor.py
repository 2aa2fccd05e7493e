"""``site doctor`` checks, and how ``site start`` builds and supervises its node."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.common.crypto import generate_audit_key
from slidefed.common.errors import ConfigError
from slidefed.common.pki import ensure_ca, ensure_server_certificate
from slidefed.demo.synth import SynthSite
from slidefed.deploy import doctor
from slidefed.deploy import site_node as deploy
from slidefed.deploy.doctor.superlink_checks import skew_check
from slidefed.deploy.supervisor import supervise


@pytest.fixture
def site_toml(small_site: SynthSite, tmp_path: Path) -> Path:
    path = tmp_path / "site" / "site.toml"
    path.parent.mkdir()
    path.write_text(
        f'[site]\nname = "doctor-test"\nmanifest = "{small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\n'
    )
    generate_audit_key(load_site_config(path).audit_key_path)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    paths = {
        "ca": root / "ca.crt",
        "ca_key": root / "ca.key",
        "cert": root / "s.crt",
        "key": root / "s.key",
    }
    ensure_ca(paths["ca"], paths["ca_key"])
    ensure_server_certificate(
        paths["ca"],
        paths["ca_key"],
        paths["cert"],
        paths["key"],
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    ensure_ca(root / "other-ca.crt", root / "other-ca.key")
    paths["other_ca"] = root / "other-ca.crt"
    return paths


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def superlink(pki: dict[str, Path]) -> Iterator[str]:
    """A stand-in for the SuperLink's HTTPS /health endpoint."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _by_name(report: doctor.DoctorReport) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks}


def test_doctor_passes_a_healthy_site_and_says_what_it_skipped(site_toml: Path) -> None:
    deploy.ensure_node_key(load_site_config(site_toml))
    report = doctor.run_doctor(site_toml, gpu=False)
    checks = _by_name(report)
    for name in (
        "manifest valid",
        "slides readable",
        "cache writable",
        "node key registered",
    ):
        assert checks[name].status == "ok", checks[name]
    assert checks["SuperLink reachable"].status == "skip"
    assert "--superlink" in checks["SuperLink reachable"].fix
    assert checks["apps approved"].status == "warn"
    assert checks["budget remaining"].status == "ok"
    assert not report.failed


def test_doctor_checks_tls_reachability_and_clock_against_the_superlink(
    site_toml: Path, superlink: str, pki: dict[str, Path]
) -> None:
    report = doctor.run_doctor(site_toml, superlink=superlink, ca=pki["ca"], gpu=False)
    checks = _by_name(report)
    assert checks["SuperLink reachable"].status == "ok"
    assert "over TLS" in checks["SuperLink reachable"].detail
    assert checks["clock skew"].status == "ok"
    assert checks["certificates valid"].status == "ok"
    assert "SuperLink expires" in checks["certificates valid"].detail


def test_doctor_fails_with_a_foreign_ca_and_says_the_fix(
    site_toml: Path, superlink: str, pki: dict[str, Path]
) -> None:
    report = doctor.run_doctor(
        site_toml, superlink=superlink, ca=pki["other_ca"], gpu=False
    )
    checks = _by_name(report)
    assert checks["SuperLink reachable"].status == "fail"
    assert "CA" in checks["SuperLink reachable"].fix
    assert checks["certificates valid"].status == "fail"
    assert report.failed


def test_doctor_fails_when_nothing_listens(
    site_toml: Path, pki: dict[str, Path]
) -> None:
    port = deploy.free_port()
    reach, skew = doctor.probe_superlink(f"127.0.0.1:{port}", pki["ca"], timeout=2)
    assert reach.status == "fail"
    assert "outbound" in reach.fix
    assert skew.status == "skip"


def test_doctor_clock_skew_rules() -> None:
    assert skew_check("Mon, 01 Jan 2001 00:00:00 GMT").status == "fail"
    assert skew_check(None).status == "skip"


def test_doctor_reports_unreadable_slides_and_a_bad_manifest(
    site_toml: Path, tmp_path: Path
) -> None:
    text = site_toml.read_text().replace(
        "slides_root = ", 'slides_root = "/nonexistent" #'
    )
    site_toml.write_text(text)
    checks = _by_name(doctor.run_doctor(site_toml, gpu=False))
    assert checks["slides readable"].status == "fail"
    assert "slides_root" in checks["slides readable"].fix
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing,useful\n1,2\n")
    site_toml.write_text(text.replace("manifest = ", f'manifest = "{bad}" #'))
    assert (
        _by_name(doctor.run_doctor(site_toml, gpu=False))["manifest valid"].status
        == "fail"
    )


def test_doctor_names_a_manifest_row_outside_the_slide_store(
    site_toml: Path,
    small_site: SynthSite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = (
        small_site.root / small_site.manifest.read_text().splitlines()[1].split(",")[0]
    )
    store, outside = tmp_path / "store", tmp_path / "outside" / "x.tiff"
    store.mkdir()
    outside.parent.mkdir()
    (store / first.name).write_bytes(first.read_bytes())
    outside.write_bytes(first.read_bytes())
    manifest = tmp_path / "escaping.csv"
    manifest.write_text(
        f"slide,patient_id,label,split\n{first.name},P1,0,train\n"
        "../outside/x.tiff,P2,1,test\n"
    )
    text = site_toml.read_text().replace("manifest = ", f'manifest = "{manifest}" #')
    site_toml.write_text(text.replace("slides_root = ", f'slides_root = "{store}" #'))
    checks = _by_name(doctor.run_doctor(site_toml, gpu=False))
    bad = checks["manifest valid"]
    assert bad.status == "fail"
    assert bad.detail == (
        f"{manifest}: line 3: slide '../outside/x.tiff' resolves to "
        f"{outside.resolve()}, outside the slide store"
    )
    assert bad.fix == (
        f"move the slide under slides_root ({store.resolve()}) or add its "
        "folder to site.extra_slide_roots in site.toml"
    )
    assert checks["slides readable"].status == "skip"
    assert main(["site", "doctor", "--config", str(site_toml)]) == 1
    out = capsys.readouterr().out
    assert "line 3: slide '../outside/x.tiff'" in out
    assert "Traceback" not in out
    # With the folder allowed the row passes and its slide is opened.
    site_toml.write_text(
        site_toml.read_text().replace(
            "[site]\n", f'[site]\nextra_slide_roots = ["{outside.parent}"]\n'
        )
    )
    checks = _by_name(doctor.run_doctor(site_toml, gpu=False))
    assert checks["manifest valid"].status == "ok"
    assert checks["slides readable"].status == "ok"
    assert checks["slides readable"].detail == "all 2 slides opened"
    # A sample says that it is one.
    sampled = doctor.check_slides(load_site_config(site_toml), sample=1)
    assert sampled.status == "ok"
    assert sampled.detail == (
        "1 slide opened, a sample spread over the manifest's 2 "
        "('slidefed site prepare' reads them all)"
    )


def test_doctor_remembers_a_refused_node_key(site_toml: Path) -> None:
    config = load_site_config(site_toml)
    deploy.ensure_node_key(config)
    doctor.record_node_status(config, 1, 305, "not_registered")
    check = doctor.check_node_key(config)
    assert check.status == "fail"
    assert "register-site" in check.fix
    doctor.clear_node_status(config)
    assert doctor.check_node_key(config).status == "ok"


def test_doctor_cli_json_and_exit_code(
    site_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["site", "doctor", "--config", str(site_toml), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False  # no node key yet
    names = [c["name"] for c in data["checks"]]
    assert names[:3] == ["site config", "manifest valid", "slides readable"]
    assert "budget remaining" in names
    deploy.ensure_node_key(load_site_config(site_toml))
    assert main(["site", "doctor", "--config", str(site_toml)]) == 0
    out = capsys.readouterr().out
    assert "fix:" in out
    assert (
        main(["site", "doctor", "--config", str(site_toml.parent / "nope.toml")]) == 1
    )


# ------------------------------------------------------------- site start
def test_node_key_is_p384_private_and_never_replaced(site_toml: Path) -> None:
    config = load_site_config(site_toml)
    public = deploy.ensure_node_key(config)
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    private = deploy.node_key_path(config)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    assert deploy.ensure_node_key(config) == public
    assert private.read_bytes() == before
    public.unlink()
    with pytest.raises(ConfigError, match="other half"):
        deploy.ensure_node_key(config)


def test_site_launch_uses_tls_node_key_process_isolation_and_own_flwr_home(
    site_toml: Path, pki: dict[str, Path]
) -> None:
    launch = deploy.build_site_launch(
        site_toml, superlink="127.0.0.1:8000", ca=pki["ca"], runtime_port=9555
    )
    argv = launch.supernode
    config = load_site_config(site_toml)
    assert Path(argv[0]).name == "flower-supernode"
    assert argv[argv.index("--root-certificates") + 1] == str(pki["ca"].resolve())
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(
        deploy.node_key_path(config)
    )
    assert (
        argv[argv.index("--node-config") + 1] == f'site-config="{site_toml.resolve()}"'
    )
    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--port") + 1] == "9555"
    assert "--insecure" not in argv
    assert launch.executor[1:4] == ["-m", "slidefed.deploy.approval_gate", "executor"]
    assert "127.0.0.1:9555" in launch.executor
    assert launch.env["FLWR_HOME"] == str(config.state_dir / "flwr")
    secret = Path(argv[argv.index("--superexec-auth-secret-file") + 1])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_bytes()


def test_site_launch_refuses_bad_input(site_toml: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ca"):
        deploy.build_site_launch(site_toml, superlink="127.0.0.1:8000", ca=None)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        deploy.build_site_launch(site_toml, superlink="nowhere", ca=None)
    with pytest.raises(ConfigError, match="no such file"):
        deploy.build_site_launch(
            site_toml, superlink="127.0.0.1:8000", ca=tmp_path / "missing.crt"
        )
    insecure = deploy.build_site_launch(
        site_toml, superlink="127.0.0.1:8000", ca=None, insecure=True
    )
    assert "--insecure" in insecure.supernode
    assert "--auth-supernode-private-key" not in insecure.supernode


def test_site_start_cli_refuses_without_a_ca(
    site_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["site", "start", "--config", str(site_toml), "--superlink", "127.0.0.1:1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ca")
    assert err.count("\n") == 1


def test_supervisor_stops_the_other_process_and_reads_flowers_reason(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stopped"
    supernode = [
        sys.executable,
        "-c",
        "import time; time.sleep(2); print('Exit Code: 305');"
        " print('[code: 2004] Failed to activate SuperNode.'); raise SystemExit(1)",
    ]
    executor = [
        sys.executable,
        "-c",
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r})"
        ".write_text('x'), sys.exit(0)))\n"
        "time.sleep(60)",
    ]
    ended = supervise([supernode, executor], dict(os.environ), grace=5)
    assert ended.code == 1
    assert ended.flower_code == 305
    assert ended.cause == "not_registered"
    assert marker.read_text() == "x"
