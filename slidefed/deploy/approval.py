"""Code approval: the list of app versions (FAB hashes) a site runs.

``approved_apps.toml`` sits next to ``site.toml``; ``slidefed site approve`` adds to
it (:func:`approve_app`) and the site's runtime reads it for every message
(:func:`check_fab`), so approving or revoking takes effect without a restart.
Anything not on the list is refused before any of its code runs, and the refusal is
audited (:func:`audit_refusal`).

Where the list is enforced, inside Flower's ClientApp process, is
:mod:`slidefed.deploy.approval_gate`. This module loads neither torch nor Flower
(:func:`fab_hash_of_app_dir` imports Flower's FAB builder when called).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slidefed.common.errors import ConfigError, PolicyViolation, SlidefedError
from slidefed.common.fileio import atomic_write_text
from slidefed.common.tomlfile import dump_toml

logger = logging.getLogger(__name__)

APPROVALS_FILE = "approved_apps.toml"
"""Name of the approval list, next to ``site.toml``."""

_HEADER = """\
# Apps (Flower FABs) this site runs, by SHA-256 of the FAB. Anything else is refused
# before any of its code runs, and the refusal is written to the site audit log.
# Add one with: slidefed site approve --config site.toml --app-dir DIR (or --fab, --hash)
"""


class AppNotApproved(PolicyViolation):
    """A run's app (FAB) is not on this site's approval list."""


class ApprovedApp(BaseModel):
    """One approved app version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fab_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = ""
    note: str = ""
    approved_at: str = ""


class ApprovedApps(BaseModel):
    """The whole ``approved_apps.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: tuple[ApprovedApp, ...] = ()

    def entry(self, fab_hash: str) -> ApprovedApp | None:
        """The list's entry for ``fab_hash`` (full SHA-256, hex), None if absent."""
        wanted = fab_hash.lower()
        return next((a for a in self.app if a.fab_hash == wanted), None)

    def approves(self, fab_hash: str) -> bool:
        """Whether ``fab_hash`` is on the list.

        Parameters
        ----------
        fab_hash : str
            Full SHA-256 (hex) of a FAB.

        Returns
        -------
        bool
            True when approved.
        """
        return self.entry(fab_hash) is not None


def approvals_path(site_config: Path) -> Path:
    """Where the approval list of the site whose config is ``site_config`` lives.

    Parameters
    ----------
    site_config : Path
        The site's ``site.toml``.

    Returns
    -------
    Path
        ``approved_apps.toml`` in the same folder.
    """
    return Path(site_config).resolve().parent / APPROVALS_FILE


def load_approved_apps(path: Path) -> ApprovedApps:
    """Read an approval list; a missing file approves nothing.

    Parameters
    ----------
    path : Path
        ``approved_apps.toml``.

    Returns
    -------
    ApprovedApps
        The list.

    Raises
    ------
    ConfigError
        If the file is not TOML or an entry breaks a rule.
    """
    if not path.is_file():
        return ApprovedApps()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return ApprovedApps.model_validate(raw)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {key} is invalid: {err['msg']}") from exc
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from exc


def approve_app(
    path: Path, fab_hash: str, *, name: str = "", note: str = ""
) -> ApprovedApps:
    """Add ``fab_hash`` to the approval list (a no-op when it is already there).

    Parameters
    ----------
    path : Path
        ``approved_apps.toml`` (created when missing).
    fab_hash : str
        Full SHA-256 (hex) of the FAB.
    name, note : str
        What the app is and who approved it, for people reading the file.

    Returns
    -------
    ApprovedApps
        The list as written.

    Raises
    ------
    ConfigError
        If ``fab_hash`` is not 64 hex digits or the file is invalid.
    """
    entry = ApprovedApp(
        fab_hash=_check_hash(fab_hash),
        name=name,
        note=note,
        approved_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    current = load_approved_apps(path)
    if current.approves(entry.fab_hash):
        return current
    updated = ApprovedApps(app=(*current.app, entry))
    # A unique temp file per writer: two approvals at once cannot collide.
    atomic_write_text(path, dump_approved_apps(updated))
    path.chmod(0o644)
    return updated


def dump_approved_apps(apps: ApprovedApps) -> str:
    """Render an approval list as TOML, under its header of comments for people.

    Parameters
    ----------
    apps : ApprovedApps
        The list.

    Returns
    -------
    str
        The header, a blank line, then one ``[[app]]`` table per approved app
        (written through ``tomli-w``: any name or note comes back as it went in).
    """
    return _HEADER + "\n" + dump_toml(apps.model_dump())


def fab_hash_of_bytes(content: bytes) -> str:
    """SHA-256 (hex) of FAB bytes, as the SuperLink and ``flwr build`` compute it.

    Parameters
    ----------
    content : bytes
        The FAB (a zip file).

    Returns
    -------
    str
        64 hex digits.
    """
    return hashlib.sha256(content).hexdigest()


def fab_hash_of_app_dir(app_dir: Path) -> str:
    """The hash of the FAB that ``flwr run APP_DIR`` would send.

    Flower builds FABs deterministically (sorted files, fixed timestamps), so the
    hash of an app folder is known before it is run.

    Parameters
    ----------
    app_dir : Path
        A Flower app folder (with ``pyproject.toml``).

    Returns
    -------
    str
        64 hex digits.

    Raises
    ------
    ConfigError
        If Flower cannot build a FAB from the folder.
    """
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} has no pyproject.toml; give a Flower app folder")
    try:
        return fab_hash_of_bytes(build_fab_from_disk(app_dir))
    except ValueError as exc:
        raise ConfigError(f"{app_dir}: Flower cannot build a FAB: {exc}") from exc


def check_fab(site_config: Path, content: bytes) -> str:
    """Return the FAB's hash if this site approves it; otherwise refuse it.

    Parameters
    ----------
    site_config : Path
        The site's ``site.toml``.
    content : bytes
        The FAB bytes that arrived from the SuperLink.

    Returns
    -------
    str
        The FAB hash.

    Raises
    ------
    AppNotApproved
        If the hash is not in ``approved_apps.toml`` (or the file is unusable).
    """
    fab_hash = fab_hash_of_bytes(content)
    path = approvals_path(site_config)
    try:
        approved = load_approved_apps(path).approves(fab_hash)
    except ConfigError as exc:
        raise AppNotApproved(f"approval list unusable, app refused: {exc}") from exc
    if not approved:
        raise AppNotApproved(
            f"app {fab_hash} is not approved by this site "
            f"(not in {path.name}); refused before any of its code ran"
        )
    return fab_hash


def audit_refusal(
    site_config: Path,
    fab_hash: str,
    *,
    run_id: int | None,
    fab_id: str = "",
    fab_version: str = "",
    reason: str = "not in approved_apps.toml",
) -> None:
    """Write ``app_refused`` to the site audit log; never raises.

    Parameters
    ----------
    site_config : Path
        The site's ``site.toml``.
    fab_hash : str
        The refused FAB's hash.
    run_id : int or None
        Flower run.
    fab_id, fab_version : str
        What the SuperLink called the app.
    reason : str
        Why it was refused.
    """
    from slidefed.client.keys import site_audit_log
    from slidefed.common.audit.events import AppRefused

    event = AppRefused(
        fab_hash=fab_hash, fab_id=fab_id, fab_version=fab_version, reason=reason
    )
    try:
        site_audit_log(site_config).append(event, run_id=run_id)
    except SlidefedError as exc:
        logger.error("could not audit the refused app %s: %s", fab_hash, exc)


def _check_hash(value: str) -> str:
    text = value.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(
            f"{value!r} is not a full FAB hash (64 hex digits); compute it with "
            "'slidefed site approve --app-dir DIR' or 'sha256sum APP.fab'"
        )
    return text


def resolve_fab_hash(
    *, app_dir: Path | None, fab: Path | None, fab_hash: str | None
) -> tuple[str, str]:
    """The FAB hash to approve, from exactly one of an app folder, a FAB or a hash.

    Parameters
    ----------
    app_dir : Path or None
        A Flower app folder (the hash of the FAB ``flwr run`` would send).
    fab : Path or None
        A built ``.fab`` file.
    fab_hash : str or None
        The hash itself.

    Returns
    -------
    tuple of (str, str)
        The hash and a name for the list (empty when given by hash).

    Raises
    ------
    ConfigError
        If not exactly one is given, or the FAB file does not exist.
    """
    given = [x for x in (app_dir, fab, fab_hash) if x is not None]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --app-dir DIR, --fab FILE, --hash SHA256"
        )
    if app_dir is not None:
        return fab_hash_of_app_dir(app_dir), app_dir.resolve().name
    if fab is not None:
        if not fab.is_file():
            raise ConfigError(f"--fab {fab}: no such file")
        return fab_hash_of_bytes(fab.read_bytes()), fab.name
    return str(fab_hash), ""


__all__ = [
    "APPROVALS_FILE",
    "AppNotApproved",
    "ApprovedApp",
    "ApprovedApps",
    "approvals_path",
    "approve_app",
    "audit_refusal",
    "check_fab",
    "dump_approved_apps",
    "fab_hash_of_app_dir",
    "fab_hash_of_bytes",
    "load_approved_apps",
    "resolve_fab_hash",
]
