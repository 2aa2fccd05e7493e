"""What slidefed's log looks like when its output goes to a file or a pipe."""

from __future__ import annotations

import subprocess
import sys

LOGS = """
import logging
from slidefed.cli._console import setup_logging

setup_logging(False)
logging.getLogger("slidefed.run").info("round 3: " + "x" * 300 + " end")
logging.getLogger("slidefed.run").debug("not shown without verbose")
logging.getLogger("flwr").info("not shown either")
logging.getLogger("flwr").warning("a warning of Flower's")
"""


def test_a_long_log_line_into_a_pipe_stays_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOGS],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    lines = done.stdout.splitlines()
    assert lines == [
        "INFO     round 3: " + "x" * 300 + " end",
        "WARNING  a warning of Flower's",
    ]
