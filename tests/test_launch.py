import json

import pytest

from slidefed.common.errors import FederationError
from slidefed.launch import parse_run_id, parse_status


def test_run_id_from_flwr_run_json() -> None:
    out = "Loading project\n" + json.dumps(
        {"success": True, "run-id": "123", "fab-id": "x"}
    )
    assert parse_run_id(out) == 123


def test_run_that_did_not_start() -> None:
    with pytest.raises(FederationError, match="did not start"):
        parse_run_id(json.dumps({"success": False, "run-id": None}))


def test_status_of_a_failed_run_is_read_not_the_exit_code() -> None:
    listing = {
        "success": True,
        "runs": [
            {"run-id": "7", "status": "finished:failed", "status-details": "exit 700"},
            {"run-id": "8", "status": "running", "status-details": ""},
        ],
    }
    assert parse_status(json.dumps(listing), 7) == ("finished:failed", "exit 700")
    assert parse_status(json.dumps(listing), 8)[0] == "running"
    with pytest.raises(FederationError, match="not listed"):
        parse_status(json.dumps(listing), 9)


def test_no_json_at_all() -> None:
    with pytest.raises(FederationError, match="no JSON"):
        parse_run_id("Connection refused")
