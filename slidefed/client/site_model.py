"""The model a site builds for a run, and how many bytes of it may leave.

The coordinator chooses the model it sends; the site does not take its word for
what a reply may carry. It builds the model itself, from the run config and its own
policy and encoder (:func:`site_model_specs`, on PyTorch's ``meta`` device: shapes
and dtypes only, no memory), and both the instruction it accepts and the reply it
lets out must match that model's arrays (names in order, shapes, dtypes). The egress
size limit is the smaller of the policy's ``max_update_bytes`` and the size of that
model (:func:`egress_limit`); it never comes from the message.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidefed.client.config import SiteConfig, SitePolicy, load_site_config
from slidefed.common.arrays import ArraySpec
from slidefed.common.errors import SlidefedError
from slidefed.common.model import Inputs, build_model, feature_dim
from slidefed.common.run_config import RunConfig, parse_run_config
from slidefed.common.site_errors import SiteError, SiteRefusal

logger = logging.getLogger(__name__)

NPY_HEADER_SLACK = 4096
"""Bytes allowed per array beyond its payload (the ``.npy`` header)."""


def site_model_specs(run: RunConfig, config: SiteConfig) -> list[ArraySpec]:
    """The arrays of the model this site trains for ``run``, in state-dict order.

    Parameters
    ----------
    run : RunConfig
        The run's config (task, labels).
    config : SiteConfig
        The site's config: its policy's allowed tasks and its own encoder.

    Returns
    -------
    list of ArraySpec
        Names, shapes and dtypes (numpy names) of the model's arrays.

    Raises
    ------
    SiteRefusal
        If the policy does not allow the task, or the run's encoder is not the
        site's.
    """
    policy = config.policy
    if run.task not in policy.allowed_tasks:
        raise SiteRefusal(
            f"task {run.task!r} is not allowed by this site's policy "
            f"(allowed_tasks={list(policy.allowed_tasks)})",
            code=SiteError.TASK_NOT_ALLOWED,
        )
    allowed = policy.allowed_encoders
    if allowed and run.encoder not in allowed:
        raise SiteRefusal(
            f"encoder {run.encoder!r} is not allowed by this site's policy "
            f"(allowed_encoders={list(allowed)})",
            code=SiteError.ENCODER_DIFFERS,
        )
    if run.encoder != config.features.encoder:
        raise SiteRefusal(
            f"the run uses encoder {run.encoder!r} but this site prepares features "
            f"with {config.features.encoder!r} (features.encoder in site.toml)",
            code=SiteError.ENCODER_DIFFERS,
        )
    try:
        dim = feature_dim(run.encoder, run.feature_dim)
    except ValueError as exc:
        raise SiteRefusal(str(exc), code=SiteError.ENCODER_DIFFERS) from exc
    prepared = _prepared_dim(config)
    if prepared and prepared != dim:
        raise SiteRefusal(
            f"the run expects {dim}-dimensional features but this site's "
            f"{config.features.encoder!r} features have {prepared} (feature-dim "
            "in the run config)",
            code=SiteError.ENCODER_DIFFERS,
        )
    specs = _model_specs(
        run.task, dim, seed=run.seed, n_classes=run.n_classes(), inputs=run.inputs
    )
    return list(specs)


@functools.lru_cache(maxsize=8)
def _model_specs(
    task: str, dim: int, *, seed: int, n_classes: int, inputs: Inputs
) -> tuple[ArraySpec, ...]:
    """The model's arrays; kept, as every message of a run asks the same."""
    # The meta device holds shapes and dtypes only: a run asking for a huge model
    # costs the site no memory to measure.
    with torch.device("meta"):
        model = build_model(task, dim, seed=seed, n_classes=n_classes, inputs=inputs)
    return tuple(
        ArraySpec(
            name=name,
            shape=tuple(int(d) for d in tensor.shape),
            dtype=str(tensor.dtype).removeprefix("torch."),
        )
        for name, tensor in model.state_dict().items()
    )


def _prepared_dim(config: SiteConfig) -> int:
    """Feature length of the site's last preparation; 0 when it is not known."""
    from slidefed.client.prepare.report import REPORT_FILE, PrepareReport

    try:
        text = (config.state_dir / REPORT_FILE).read_bytes()
        return PrepareReport.model_validate_json(text).feature_dim
    except (OSError, ValueError):
        return 0


def model_nbytes(specs: list[ArraySpec]) -> int:
    """Payload bytes of arrays of ``specs``."""
    return sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in specs)


def egress_limit(policy: SitePolicy, specs: list[ArraySpec] | None) -> int:
    """Most bytes of arrays a reply may carry: the policy's, or less for the model.

    Parameters
    ----------
    policy : SitePolicy
        The site's policy (``max_update_bytes``).
    specs : list of ArraySpec or None
        The site's own model for the run; None when it has none.

    Returns
    -------
    int
        ``min(max_update_bytes, model bytes + one .npy header per array)``.
    """
    if specs is None:
        return policy.max_update_bytes
    serialised = model_nbytes(specs) + NPY_HEADER_SLACK * len(specs)
    return min(policy.max_update_bytes, serialised)


def dtype_fits(got: str, want: str) -> bool:
    """``want``, or a narrower float (float16 for float32: less capacity)."""
    if got == want:
        return True
    try:
        have, model = np.dtype(got), np.dtype(want)
    except TypeError:
        return False
    return bool(
        np.issubdtype(have, np.floating)
        and np.issubdtype(model, np.floating)
        and have.itemsize < model.itemsize
    )


def check_model_in(
    arrays: Mapping[str, Any] | None, specs: list[ArraySpec], policy: SitePolicy
) -> None:
    """Refuse an instruction whose model is too large or is not the site's model.

    Parameters
    ----------
    arrays : mapping of str to flwr.app.Array, or None
        The arrays of the instruction (its one ArrayRecord).
    specs : list of ArraySpec
        The site's own model (:func:`site_model_specs`).
    policy : SitePolicy
        The site's policy (``max_update_bytes``).

    Raises
    ------
    SiteRefusal
        :attr:`SiteError.MODEL_TOO_LARGE` if the arrays sent, or the site's model
        for this run, exceed ``max_update_bytes``; :attr:`SiteError.MODEL_DIFFERS`
        if the names, order, shapes or dtypes are not the site's model.
    """
    limit = policy.max_update_bytes
    sent = 0 if arrays is None else sum(len(a.data) for a in arrays.values())
    if sent > limit or model_nbytes(specs) > limit:
        raise SiteRefusal(
            f"the model sent ({sent} bytes; this site's model for the run "
            f"{model_nbytes(specs)} bytes) exceeds policy.max_update_bytes={limit}; "
            "raise it in site.toml only for a model you approve",
            code=SiteError.MODEL_TOO_LARGE,
        )
    problem = _model_difference(arrays, specs)
    if problem:
        raise SiteRefusal(
            f"the model sent is not this site's model for the run: {problem}",
            code=SiteError.MODEL_DIFFERS,
        )


def _model_difference(
    arrays: Mapping[str, Any] | None, specs: list[ArraySpec]
) -> str | None:
    if not arrays:
        return "no arrays"
    names = list(arrays)
    if names != [s.name for s in specs]:
        return f"{len(names)} arrays, not the site's {len(specs)} in its order"
    for spec in specs:
        array = arrays[spec.name]
        if tuple(array.shape) != spec.shape:
            return f"{spec.name}: shape {tuple(array.shape)} != {spec.shape}"
        if not dtype_fits(str(array.dtype), spec.dtype):
            return f"{spec.name}: dtype {array.dtype} != {spec.dtype}"
    return None


def site_config_path(context: Any) -> Path | None:
    """The site.toml of this node (deployment or simulation), if it has one."""
    node = dict(context.node_config)
    if "site-config" in node:
        return Path(str(node["site-config"]))
    sites = [
        p for p in str(dict(context.run_config).get("sim-sites", "")).split(",") if p
    ]
    if "partition-id" in node and sites:
        pid = int(node["partition-id"])
        if 0 <= pid < len(sites):
            return Path(sites[pid])
    return None


def expected_model(context: Any) -> tuple[list[ArraySpec] | None, int]:
    """The site's own model for this node's run, and the egress size limit.

    Parameters
    ----------
    context : flwr.app.Context
        The node's context (its run config and site config).

    Returns
    -------
    tuple
        The model's specs (None when the site trains no model for this run: a run
        config it cannot read, a task its policy forbids, another encoder) and the
        most bytes of arrays a reply may carry.
    """
    path = site_config_path(context)
    config: SiteConfig | None = None
    if path is not None:
        try:
            config = load_site_config(path)
        except SlidefedError as exc:
            logger.warning("egress guard: site config unreadable (%s)", exc)
    try:
        run = parse_run_config(dict(context.run_config))
    except SlidefedError:
        return None, (config.policy if config else SitePolicy()).max_update_bytes
    if config is None:
        config = SiteConfig.model_validate(
            {"site": {"name": "unknown"}, "features": {"encoder": run.encoder}}
        )
    try:
        specs = site_model_specs(run, config)
    except (SiteRefusal, ValueError):
        return None, config.policy.max_update_bytes
    return specs, egress_limit(config.policy, specs)


__all__ = [
    "NPY_HEADER_SLACK",
    "check_model_in",
    "dtype_fits",
    "egress_limit",
    "expected_model",
    "model_nbytes",
    "site_config_path",
    "site_model_specs",
]
