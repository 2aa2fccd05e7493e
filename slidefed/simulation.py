"""Run a federation of local site folders on Flower's simulation engine.

Works from a plain ``pip install``: a tiny app folder (a ``pyproject.toml`` whose
components point at the installed :mod:`slidefed.server.app` and
:mod:`slidefed.client.app`) is written into the run folder, and the run config
reaches both apps through the same fused config that ``flwr run`` builds.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from slidefed.common.errors import ConfigError, FederationError, SlidefedError
from slidefed.common.flower_env import quiet_flower_defaults
from slidefed.common.run_config import RunConfig, parse_run_config
from slidefed.common.tomlfile import dump_toml
from slidefed.server.metrics import write_site_names

logger = logging.getLogger(__name__)

_APP_PROJECT: dict[str, Any] = {
    "build-system": {
        "requires": ["setuptools>=68"],
        "build-backend": "setuptools.build_meta",
    },
    "project": {
        "name": "slidefed-run",
        "version": "0.1.0",
        "description": "slidefed's federated run: its components and run defaults",
        "license": "Apache-2.0",
        "dependencies": ["slidefed"],
    },
}
_APP_COMPONENTS = {
    "serverapp": "slidefed.server.app:app",
    "clientapp": "slidefed.client.app:app",
}


def app_pyproject(config: dict[str, Any]) -> str:
    """The app folder's ``pyproject.toml`` (through ``tomli-w``), run config ``config``."""
    app = {"publisher": "slidefed", "components": _APP_COMPONENTS, "config": config}
    return dump_toml({**_APP_PROJECT, "tool": {"flwr": {"app": app}}})


def write_app_dir(folder: Path) -> Path:
    """Write the tiny Flower app folder; its config holds the run defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    defaults = RunConfig().model_dump(by_alias=True)
    (folder / "pyproject.toml").write_text(app_pyproject(defaults))
    return folder


def quiet_flower_environment() -> None:
    """Environment for runs started by slidefed: no telemetry, no dep install."""
    quiet_flower_defaults(os.environ)
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
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    # flwr resets its logger when imported; quiet it here, after the import.
    _quiet_flower_logger(verbose)
    if not run.run_dir:
        raise FederationError("run-dir must be set for a simulated run")
    app_dir = write_app_dir(Path(run.run_dir) / "app")
    flwr_run, context = _server_run(run, app_dir)
    cpus = total_cpus or os.cpu_count() or 1
    _name_nodes_as_sites(run)
    try:
        _run_simulation(
            num_supernodes=n_sites,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app_attr="slidefed.server.app:app",
            client_app_attr=client_app_attr,
            backend_name="ray",
            backend_config=_backend_config(cpus_per_site, cpus, verbose),
            app_dir=str(app_dir),
            run=flwr_run,
            server_app_context=context,
            is_app=True,
            verbose_logging=verbose,
        )
    except Exception as exc:
        raise FederationError(f"the simulated federation failed: {exc}") from exc
    finally:
        _shutdown_ray()


def _name_nodes_as_sites(run: RunConfig) -> None:
    """Record which simulated node plays which site, by name, in the run folder.

    The engine gives node ``i`` (a random id) partition ``i``, and a site takes
    the ``i``-th entry of ``sim-sites``; the plot and the model card then name
    sites ``hospital-a``, not by node id. The engine's mapping is read where it
    is made (private to Flower 1.42: without it, sites keep their node ids).
    """
    try:
        vce: Any = importlib.import_module("flwr.server.superlink.fleet.vce.vce_api")
    except ImportError:  # pragma: no cover - another Flower layout
        return
    original = getattr(vce, "_register_nodes", None)
    if original is None or getattr(original, "_slidefed", False):
        return
    run_dir = Path(run.run_dir)

    def register(*args: Any, **kwargs: Any) -> Any:
        mapping = original(*args, **kwargs)
        try:
            names = _site_names(run)
            write_site_names(
                run_dir,
                {node: names[pid] for node, pid in mapping.items() if pid < len(names)},
            )
        except (OSError, SlidefedError) as exc:
            logger.debug("sites keep their node ids in the plot: %s", exc)
        return mapping

    register._slidefed = True  # type: ignore[attr-defined]
    vce._register_nodes = register


def _site_names(run: RunConfig) -> list[str]:
    """The name of each ``sim-sites`` entry, in order."""
    from slidefed.client.config import load_site_config

    return [load_site_config(path).site.name for path in run.site_configs()]


def _quiet_flower_logger(verbose: bool) -> None:
    """Flower's logger at WARNING (DEBUG with ``verbose``), not passed to ours."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    flwr_logger.propagate = False


def _server_run(run: RunConfig, app_dir: Path) -> tuple[Any, Any]:
    """Flower's ``Run`` and the ServerApp's ``Context``, as ``flwr run`` makes them.

    The run config reaches both apps as the fused config of ``app_dir`` and the
    overrides from ``run``.
    """
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

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
    return flwr_run, context


def _backend_config(cpus_per_site: float, cpus: int, verbose: bool) -> dict[str, Any]:
    """Ray backend settings: CPUs per site and in all, quiet unless ``verbose``."""
    return {
        "client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "logging_level": "INFO" if verbose else "ERROR",
            "log_to_driver": verbose,
            "include_dashboard": False,
        },
    }


def _shutdown_ray() -> None:
    """Stop Ray if the run started it, so that the next run starts clean."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray comes with flwr[simulation]
        pass


def simulation_sites(sites: list[Path]) -> list[Path]:
    """The ``site.toml`` of each ``--sites`` entry (the file, or its folder).

    Raises
    ------
    ConfigError
        If an entry has no ``site.toml``.
    """
    paths = [p / "site.toml" if p.is_dir() else p for p in sites]
    for p in paths:
        if not p.is_file():
            raise ConfigError(
                f"--sites {p}: no site.toml there; run 'slidefed site init'"
            )
    return paths


def check_run_folder(out: Path, *, resume: bool) -> Path:
    """``out``, resolved: a fresh run folder, or one holding a run to resume.

    Raises
    ------
    ConfigError
        If ``out`` holds a run and ``resume`` is false, or holds none to resume.
    """
    out = out.resolve()
    if not resume and (out / "checkpoints").is_dir():
        raise ConfigError(
            f"--out {out} already holds a run; pass --resume to continue it or "
            "choose a new folder"
        )
    if resume and not (out / "checkpoints").is_dir():
        raise ConfigError(f"--resume: {out} holds no checkpoint to resume from")
    return out


def simulation_run_config(
    sites: list[Path],
    out: Path,
    *,
    rounds: int,
    seed: int,
    resume: bool,
    strategy: str,
    target_epsilon: float,
    local_epochs: int,
    lr: float,
    wire_dtype: str,
) -> RunConfig:
    """Make the run folder ``out`` and the run config of a simulated federation.

    Raises
    ------
    ConfigError
        If a value breaks a rule of :class:`RunConfig`.
    """
    out.mkdir(parents=True, exist_ok=True)
    return parse_run_config(
        {
            **sites_encoder(sites),
            "num-server-rounds": rounds,
            "seed": seed,
            "strategy": strategy,
            "target-epsilon": target_epsilon,
            "local-epochs": local_epochs,
            "lr": lr,
            "wire-dtype": wire_dtype,
            "resume": resume,
            "min-sites": len(sites),
            "run-dir": str(out),
            "run-name": f"sim:{out}",
            "sim-sites": ",".join(str(p.resolve()) for p in sites),
        }
    )


def sites_encoder(sites: list[Path]) -> dict[str, Any]:
    """The run config's ``encoder`` (and ``feature-dim``) that the sites share.

    The feature length is that of the sites' prepared features when the
    encoder's name does not fix it.

    Raises
    ------
    ConfigError
        If the sites prepare features with different encoders.
    """
    from slidefed.client.config import load_site_config
    from slidefed.client.prepare.report import REPORT_FILE, PrepareReport
    from slidefed.common.encoder_names import known_dim

    configs = [load_site_config(p) for p in sites]
    names = sorted({c.features.encoder for c in configs})
    if len(names) != 1:
        raise ConfigError(
            f"the sites use different encoders ({', '.join(names)}); set the same "
            "features.encoder in every site.toml"
        )
    out: dict[str, Any] = {"encoder": names[0]}
    if known_dim(names[0]) is None:
        for config in configs:
            try:
                text = (config.state_dir / REPORT_FILE).read_bytes()
                dim = PrepareReport.model_validate_json(text).feature_dim
            except (OSError, ValueError):
                continue
            if dim:
                out["feature-dim"] = dim
                break
    return out


__all__ = [
    "app_pyproject",
    "check_run_folder",
    "quiet_flower_environment",
    "run_simulation",
    "simulation_run_config",
    "simulation_sites",
    "sites_encoder",
    "write_app_dir",
]
