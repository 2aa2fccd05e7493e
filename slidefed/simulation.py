"""Run a federation of local site folders on Flower's simulation engine.

Works from a plain ``pip install``: a tiny app folder (a ``pyproject.toml`` whose
components point at the installed :mod:`slidefed.server.app` and
:mod:`slidefed.client.app`) is written into the run folder, and the run config
reaches both apps through the same fused config that ``flwr run`` builds.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from slidefed.common.errors import FederationError
from slidefed.common.run_config import RunConfig

logger = logging.getLogger(__name__)

_APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "slidefed-run"
version = "0.1.0"
dependencies = ["slidefed"]

[tool.flwr.app]
publisher = "slidefed"

[tool.flwr.app.components]
serverapp = "slidefed.server.app:app"
clientapp = "slidefed.client.app:app"

[tool.flwr.app.config]
{defaults}
"""


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_app_dir(folder: Path) -> Path:
    """Write the tiny Flower app folder; its config holds the run defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    defaults = RunConfig().model_dump(by_alias=True)
    lines = "\n".join(f"{k} = {_toml_scalar(v)}" for k, v in defaults.items())
    (folder / "pyproject.toml").write_text(_APP_PYPROJECT.format(defaults=lines))
    return folder


def quiet_flower_environment() -> None:
    """Environment for runs started by slidefed: no telemetry, no dep install."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_simulation(
    run: RunConfig,
    *,
    n_sites: int,
    cpus_per_site: float = 1.0,
    total_cpus: int | None = None,
    verbose: bool = False,
    client_app_attr: str = "slidefed.client.app:app",
) -> None:
    """Run ``run`` over ``n_sites`` simulated sites; returns when the run ends.

    Raises
    ------
    FederationError
        If the ServerApp or the engine failed.
    """
    quiet_flower_environment()
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    # flwr resets its logger when imported; quiet it here, after the import.
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    flwr_logger.propagate = False
    if not run.run_dir:
        raise FederationError("run-dir must be set for a simulated run")
    app_dir = write_app_dir(Path(run.run_dir) / "app")
    overrides = run.model_dump(by_alias=True)
    run_id = secrets.randbits(63)
    flwr_run = Run.create_empty(run_id=run_id)
    flwr_run.override_config = overrides
    flwr_run.primary_task_id = secrets.randbits(63)
    flwr_run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=get_fused_config_from_dir(app_dir, overrides),
    )
    cpus = total_cpus or os.cpu_count() or 1
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "logging_level": "INFO" if verbose else "ERROR",
            "log_to_driver": verbose,
            "include_dashboard": False,
        },
    }
    try:
        _run_simulation(
            num_supernodes=n_sites,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app_attr="slidefed.server.app:app",
            client_app_attr=client_app_attr,
            backend_name="ray",
            backend_config=backend_config,
            app_dir=str(app_dir),
            run=flwr_run,
            server_app_context=context,
            is_app=True,
            verbose_logging=verbose,
        )
    except Exception as exc:
        raise FederationError(f"the simulated federation failed: {exc}") from exc
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:  # pragma: no cover - ray comes with flwr[simulation]
            pass


__all__ = ["quiet_flower_environment", "run_simulation", "write_app_dir"]
