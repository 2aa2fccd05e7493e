"""A stand-in for the ``flwr`` command: ``run``, ``ls`` and ``log`` of one run.

The tests put it on PATH as ``flwr``. It builds the FAB of the app it is given the
way ``flwr run`` does and keeps its hash, answers ``ls`` with ``running`` a few
times and then ``FAKE_FLWR_STATUS``, and streams a log in which the ServerApp's
per-round lines sit among Flower's own (coloured, and one of them twice).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_FLWR_DIR"])
RUN_ID = 7

LOG = [
    "\x1b[92mINFO \x1b[0m:      Starting FedAvg strategy:",
    "\x1b[92mINFO \x1b[0m:      [ROUND 1/2]",
    "\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'epsilon_max': 1.2}",
    "\x1b[92mINFO \x1b[0m:      slidefed round 1/2: 2 sites trained, 2 evaluated; "
    "accuracy 0.600, AUC 0.700 (noised); highest site epsilon 1.200; 0 errors",
    "\x1b[92mINFO \x1b[0m:      slidefed round 1/2: 2 sites trained, 2 evaluated; "
    "accuracy 0.600, AUC 0.700 (noised); highest site epsilon 1.200; 0 errors",
    "\x1b[92mINFO \x1b[0m:      [ROUND 2/2]",
    "\x1b[92mINFO \x1b[0m:      slidefed round 2/2: 2 sites trained, 2 evaluated; "
    "accuracy 0.750, AUC 0.800 (noised); highest site epsilon 2.000; 0 errors",
    "\x1b[92mINFO \x1b[0m:      Strategy execution finished in 3.00s",
]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run(app: str) -> None:
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(Path(app))
    (STATE / "submitted-hash").write_text(hashlib.sha256(fab).hexdigest())
    _say("Loading project configuration...")
    _say(json.dumps({"success": True, "run-id": str(RUN_ID), "fab-id": "x/y"}))


def _ls() -> None:
    counter = STATE / "ls-calls"
    calls = int(counter.read_text()) if counter.is_file() else 0
    counter.write_text(str(calls + 1))
    status = "running" if calls < 1 else os.environ["FAKE_FLWR_STATUS"]
    details = "" if status == "running" else "exit code 700"
    run = {"run-id": str(RUN_ID), "status": status, "status-details": details}
    _say(json.dumps({"success": True, "runs": [run]}))


def _log() -> None:
    for line in LOG:
        _say(line)
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    command = argv[0]
    if command == "run":
        _run(argv[1])
    elif command == "ls":
        _ls()
    elif command == "log":
        _log()
    else:
        sys.stderr.write(f"fake flwr: no {command!r}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
