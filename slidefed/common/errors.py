"""Error hierarchy of slidefed.

::

    SlidefedError
     ├── ConfigError (ValueError)         exit 2: bad config or bad CLI input
     │    └── SiteNotPrepared             exit 2: features not prepared for a round
     ├── ManifestError (ValueError)       exit 2: the site manifest is invalid
     │    └── SlidePathError              exit 2: a row's slide is outside the store
     ├── SlideReadError (ValueError)      exit 2: a slide cannot be read
     │    └── SlideDecodeRefused          exit 2: a tile would decode past the cap
     ├── ArchiveError                     exit 2: the DICOMweb archive cannot be used
     │    ├── ArchiveUnreachable          exit 2: no answer, after the retries
     │    └── ArchiveAuthError            exit 2: the archive refused the credentials
     ├── PolicyViolation                  exit 3: a request breaks the site policy
     │    └── PrivacyBudgetExhausted      exit 3: a round would exceed the budget
     ├── AuditError                       exit 4: audit log missing or unusable
     └── FederationError                  exit 5: a federated run failed

Only the CLI turns these into exit codes (``exit_code`` on each class).
"""

from __future__ import annotations


class SlidefedError(Exception):
    """Base class of every error that slidefed raises on purpose."""

    exit_code: int = 1


class ConfigError(SlidefedError, ValueError):
    """A configuration value breaks a rule; the message names the key and the fix."""

    exit_code = 2


class ManifestError(SlidefedError, ValueError):
    """The site manifest is invalid as a whole."""

    exit_code = 2


class SlidePathError(ManifestError):
    """A manifest row names a slide outside the site's slide store.

    The message names the manifest, the row and the slide; ``fix`` says how to
    repair it, and ``str()`` holds both on one line.
    """

    def __init__(self, detail: str, *, fix: str) -> None:
        super().__init__(f"{detail}; {fix}")
        self.detail = detail
        self.fix = fix


class SlideReadError(SlidefedError, ValueError):
    """A slide file cannot be opened or read; the message names file and reason."""

    exit_code = 2

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[SlideReadError], tuple[str, str]]:
        # Raised in worker processes too: pickled with both arguments.
        return (type(self), (self.path, self.reason))


class SlideDecodeRefused(SlideReadError):
    """A stored tile declares more pixels than the slide or the site's cap allow.

    Raised before the tile is decoded; the whole slide is skipped and named.
    """


class SiteNotPrepared(ConfigError):
    """A round needs features the site has not prepared (``slidefed site prepare``)."""


class ArchiveError(SlidefedError):
    """The site's DICOMweb archive (PACS, VNA) cannot be used; one line with the fix.

    Not a :class:`SlideReadError`: an archive that is down or refuses the site's
    credentials stops preparation (the slides prepared so far are kept) instead
    of skipping every slide that follows.
    """

    exit_code = 2


class ArchiveUnreachable(ArchiveError):
    """The archive did not answer (refused, timed out, 5xx), after the retries."""


class ArchiveAuthError(ArchiveError):
    """The archive refused the site's credentials (HTTP 401 or 403)."""


class PolicyViolation(SlidefedError):
    """A request from a run breaks the site policy."""

    exit_code = 3


class PrivacyBudgetExhausted(PolicyViolation):
    """Training this round would spend more privacy than the site allows."""

    exit_code = 3


class AuditError(SlidefedError):
    """The audit log cannot be written or read."""

    exit_code = 4


class FederationError(SlidefedError):
    """A federated run did not complete."""

    exit_code = 5


__all__ = [
    "ArchiveAuthError",
    "ArchiveError",
    "ArchiveUnreachable",
    "AuditError",
    "ConfigError",
    "FederationError",
    "ManifestError",
    "PolicyViolation",
    "PrivacyBudgetExhausted",
    "SiteNotPrepared",
    "SlideDecodeRefused",
    "SlidePathError",
    "SlideReadError",
    "SlidefedError",
]
