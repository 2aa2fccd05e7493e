"""The audit log that sites and the server write: signed, hash-chained JSON lines.

- :mod:`~slidefed.common.audit.records`: the on-disk format (records, the head
  file, canonical JSON) and how a line is parsed;
- :mod:`~slidefed.common.audit.events`: one payload model for every event written
  (``RoundCharged``, ``UpdateReleased``, ...; import them from there);
- :mod:`~slidefed.common.audit.writer`: :class:`AuditLog`, which signs and appends.

Reading and verifying logs is the auditor's job: see :mod:`slidefed.audit`. Importing
this package loads only the standard library, pydantic and ``cryptography``.
"""

from slidefed.common.audit.events import EVENT_MODELS as EVENT_MODELS
from slidefed.common.audit.events import AuditEvent as AuditEvent
from slidefed.common.audit.events import parse_payload as parse_payload
from slidefed.common.audit.records import (
    DEFAULT_PUBLIC_KEY_NAME as DEFAULT_PUBLIC_KEY_NAME,
)
from slidefed.common.audit.records import GENESIS_HASH as GENESIS_HASH
from slidefed.common.audit.records import Actor as Actor
from slidefed.common.audit.records import AuditHead as AuditHead
from slidefed.common.audit.records import AuditRecord as AuditRecord
from slidefed.common.audit.records import canonical_json as canonical_json
from slidefed.common.audit.records import head_path as head_path
from slidefed.common.audit.records import line_hash as line_hash
from slidefed.common.audit.writer import AuditBatch as AuditBatch
from slidefed.common.audit.writer import AuditEntry as AuditEntry
from slidefed.common.audit.writer import AuditLog as AuditLog

__all__ = [
    "DEFAULT_PUBLIC_KEY_NAME",
    "EVENT_MODELS",
    "GENESIS_HASH",
    "Actor",
    "AuditBatch",
    "AuditEntry",
    "AuditEvent",
    "AuditHead",
    "AuditLog",
    "AuditRecord",
    "canonical_json",
    "head_path",
    "line_hash",
    "parse_payload",
]
