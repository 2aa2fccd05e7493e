"""The site's audit key and its audit log writer, without the heavy imports of training."""

from __future__ import annotations

from pathlib import Path

from slidefed.client.config import SiteConfig, load_site_config
from slidefed.client.privacy.randomness import ensure_site_secret, secret_path
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key, load_audit_key, public_key_path


def ensure_site_keys(config: SiteConfig) -> None:
    """Create the site's audit key and randomness secret if it has none yet.

    The secret (``keys/rng_secret``) seeds every random draw that shapes a
    release; it never leaves the site (:mod:`slidefed.client.privacy.randomness`).

    The public half is also copied next to the audit log, so that a log folder
    handed to an auditor carries the key it claims; auditors should still pin
    the key they received out of band (``slidefed audit verify --keys``).
    """
    ensure_site_secret(secret_path(config.state_dir))
    if not config.audit_key_path.is_file():
        config.audit_key_path.parent.mkdir(parents=True, exist_ok=True)
        generate_audit_key(config.audit_key_path)
    public = public_key_path(config.audit_key_path)
    beside_log = config.audit_path.parent / "audit_key.pub"
    if not beside_log.is_file():
        beside_log.parent.mkdir(parents=True, exist_ok=True)
        beside_log.write_bytes(public.read_bytes())


def site_audit_log(site_config: Path) -> AuditLog:
    """The audit log writer of the site whose config is ``site_config``.

    Parameters
    ----------
    site_config : Path
        ``site.toml``.

    Returns
    -------
    slidefed.common.audit.writer.AuditLog
        The writer.

    Raises
    ------
    ConfigError, AuditError
        If the config or the audit key cannot be read.
    """
    config = load_site_config(site_config)
    return AuditLog(
        config.audit_path,
        key=load_audit_key(config.audit_key_path),
        actor="site",
        actor_name=config.site.name,
    )


__all__ = ["ensure_site_keys", "site_audit_log"]
