"""The site's keys, without the heavy imports of the training path."""

from __future__ import annotations

from slidefed.common.config import SiteConfig
from slidefed.common.crypto import generate_audit_key, public_key_path


def ensure_audit_key(config: SiteConfig) -> None:
    """Create the site's audit key if it has none yet.

    The public half is also copied next to the audit log, so that a log folder
    handed to an auditor carries the key it claims; auditors should still pin
    the key they received out of band (``slidefed audit verify --keys``).
    """
    if not config.audit_key_path.is_file():
        config.audit_key_path.parent.mkdir(parents=True, exist_ok=True)
        generate_audit_key(config.audit_key_path)
    public = public_key_path(config.audit_key_path)
    beside_log = config.audit_path.parent / "audit_key.pub"
    if not beside_log.is_file():
        beside_log.parent.mkdir(parents=True, exist_ok=True)
        beside_log.write_bytes(public.read_bytes())


__all__ = ["ensure_audit_key"]
