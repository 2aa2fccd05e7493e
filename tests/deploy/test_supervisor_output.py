"""What a supervised site writes to its log: every process's lines, no colour codes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from slidefed.deploy.supervisor import supervise
    py = sys.executable
    node = [py, "-c", "import time; print('\\\\x1b[32mINFO\\\\x1b[0m :  node up', "
            "flush=True); time.sleep(3)"]
    executor = [py, "-c", "print('\\\\x1b[33mWARNING \\\\x1b[0m:  executor says', "
                "flush=True)"]
    sys.exit(supervise([node, executor], dict(os.environ), grace=2).code)
    """
)


def test_a_site_log_file_holds_every_process_and_no_ansi_codes() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        timeout=120,
        env={**os.environ},
        check=False,
    )
    log = done.stdout.decode()
    assert "INFO :  node up" in log
    assert "WARNING :  executor says" in log  # the second process, passed through
    assert "\x1b[" not in log
