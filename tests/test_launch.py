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


def test_a_run_refused_on_the_public_port_says_where_to_launch() -> None:
    # What flwr 1.42 prints when a connection points at the nginx front.
    message = (
        "Flower App configuration warnings in '/w/app/pyproject.toml':\n"
        '- Recommended property "description" missing in [project]\n'
        '- Recommended property "license" missing in [project]\n'
        "Using SuperLink: consortium (localhost:8000)\n\n"
        "Client error '403 Forbidden' for url "
        "'https://localhost:8000/v1/control/start-run'"
    )
    with pytest.raises(FederationError) as caught:
        parse_run_id(json.dumps({"success": False, "error-message": message}))
    text = str(caught.value)
    assert "\n" not in text
    assert "Recommended property" not in text
    assert "403 Forbidden" in text
    assert "SSH tunnel" in text


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
