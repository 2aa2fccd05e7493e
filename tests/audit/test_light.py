"""The auditor's tools run without torch, numpy, Flower or Opacus.

A fresh interpreter imports the audit modules, verifies a small log and writes the
report through the ``slidefed audit`` commands, then lists the heavy modules that
got imported: there must be none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "numpy", "flwr", "opacus", "scipy", "matplotlib", "ray", "PIL")

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import slidefed.cli.audit
    import slidefed.common.audit.writer
    import slidefed.audit.verify
    import slidefed.bench.audit
    import slidefed.audit.check
    import slidefed.common.crypto
    import slidefed.audit.report
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    folder = Path(sys.argv[1])
    heavy = sys.argv[2].split(",")
    key = Ed25519PrivateKey.generate()
    log = folder / "audit.jsonl"
    slidefed.bench.audit.write_bench_log(log, 20, key)
    keys = folder / "keys"
    keys.mkdir()
    pub = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    (keys / "site.pub").write_bytes(pub + b"\\n")
    app = slidefed.cli.audit.audit_app
    app(["verify", str(log), "--keys", str(keys)], standalone_mode=False)
    report = folder / "report.html"
    app(
        ["report", str(log), "--keys", str(keys), "--out", str(report)],
        standalone_mode=False,
    )
    print(json.dumps({
        "loaded": sorted(name for name in heavy if name in sys.modules),
        "report": report.stat().st_size,
    }))
    """
)


def test_verify_and_report_import_nothing_heavy(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "OK: every chain, signature and cross-check holds" in lines
    outcome = json.loads(lines[-1])
    assert outcome["loaded"] == []
    assert outcome["report"] > 1000


ENTRY_POINT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from slidefed.cli import main
    from slidefed.bench.audit import write_bench_log

    folder = Path(sys.argv[1])
    log = folder / "audit.jsonl"
    key = Ed25519PrivateKey.generate()
    write_bench_log(log, 5, key)
    pub = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    (folder / "audit_key.pub").write_bytes(pub + b"\\n")
    rc = main(["audit", "report", str(log), "--out", str(folder / "r.html")])
    heavy = sys.argv[2].split(",")
    print(json.dumps({"rc": rc, "loaded": sorted(n for n in heavy if n in sys.modules)}))
    """
)


def test_the_slidefed_command_reaches_audit_without_heavy_imports(
    tmp_path: Path,
) -> None:
    """What an auditor runs: the ``slidefed`` entry point, then ``audit ...``."""
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, str(tmp_path), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["loaded"] == []
    assert outcome["rc"] == 0
