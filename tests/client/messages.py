"""Flower Messages and Contexts as a coordinator sends them to the site's ClientApp."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    RecordDict,
)

from slidefed.client.config import load_site_config
from slidefed.common.arrays import specs_of
from slidefed.common.crypto import generate_audit_key
from slidefed.common.model import build_model, feature_dim
from slidefed.common.run_config import RunConfig
from slidefed.common.wire import update_arrays

_IDS = itertools.count()


def model_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of the ABMIL/hed model built from ``seed``, as a coordinator sends."""
    model = build_model("abmil", feature_dim("hed"), seed=seed)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def keyed_site(folder: Path, name: str) -> Path:
    """A minimal ``site.toml`` in ``folder / "site"``, with its audit key made."""
    path = folder / "site" / "site.toml"
    path.parent.mkdir()
    path.write_text(f'[site]\nname = "{name}"\n')
    generate_audit_key(load_site_config(path).audit_key_path)
    return path


def reply_arrays(reply: Message) -> dict[str, np.ndarray]:
    """The named arrays of a site's train reply (packed on the wire)."""
    assert not reply.has_error(), reply.error
    record = reply.content.array_records["arrays"]
    return update_arrays(record, specs_of(model_arrays()))


def instruction(
    kind: str,
    server_round: int,
    *,
    seed: int = 0,
    run_id: int = 42,
    arrays: dict[str, np.ndarray] | None = None,
) -> Message:
    """A train or evaluate instruction carrying ``arrays`` (default: the model)."""
    sent = model_arrays(seed) if arrays is None else arrays
    record = ArrayRecord({k: Array(v) for k, v in sent.items()})
    meta = Metadata(
        run_id=run_id,
        message_id=f"{kind}-{server_round}-{next(_IDS)}",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=600.0,
        message_type=kind,
    )
    content = RecordDict(
        {"arrays": record, "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content=content, metadata=meta)  # type: ignore[call-overload,no-any-return]


def node_context(site_toml: Path, *, run_id: int = 42, **run: Any) -> Context:
    """The node's Context for a run config of ``run`` (snake_case keys)."""
    config = RunConfig(**run).model_dump(by_alias=True)
    return Context(
        run_id=run_id,
        node_id=7,
        node_config={"site-config": str(site_toml)},
        state=RecordDict(),
        run_config=config,
    )


__all__ = ["instruction", "keyed_site", "model_arrays", "node_context", "reply_arrays"]
