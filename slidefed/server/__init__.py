"""The coordinator side: where updates are validated and aggregated.

- :mod:`~slidefed.server.app`: the ServerApp (``slidefed.server.app:app``), which runs
  the rounds, checkpoints, logs and audits each one.
- :mod:`~slidefed.server.validation`: ``ValidatingMixin``, the checks every train
  reply passes before aggregation (names, shapes, dtypes, finite values, norm).
- :mod:`~slidefed.server.strategy`: the Flower strategies slidefed offers, each with
  that validation, and their checkpointed state.
- :mod:`~slidefed.server.checkpoints`, :mod:`~slidefed.server.metrics`: the run
  folder's per-round checkpoints, ``metrics.jsonl`` and model card.
- :mod:`~slidefed.server.config`: the coordinator's ``server.toml``.

Importing this package stays light (no Flower, no torch): the app, the strategies
and the validation import Flower, so they are not re-exported here; import them
from their modules.
"""

from slidefed.server.checkpoints import Checkpoint as Checkpoint
from slidefed.server.checkpoints import CheckpointManifest as CheckpointManifest
from slidefed.server.checkpoints import Checkpoints as Checkpoints
from slidefed.server.config import ServerConfig as ServerConfig
from slidefed.server.config import load_server_config as load_server_config
from slidefed.server.metrics import MetricsLog as MetricsLog
from slidefed.server.metrics import write_model_card as write_model_card

__all__ = [
    "Checkpoint",
    "CheckpointManifest",
    "Checkpoints",
    "MetricsLog",
    "ServerConfig",
    "load_server_config",
    "write_model_card",
]
