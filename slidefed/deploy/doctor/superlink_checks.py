"""The doctor's checks against the SuperLink: reachable over TLS, and the clock skew."""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from slidefed.deploy.doctor.report import Check

MAX_SKEW_S = 60.0
"""Clock difference with the SuperLink above which the check warns (fails at 5x)."""

REACH, CLOCK = "SuperLink reachable", "clock skew"


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) as host and port.

    Parameters
    ----------
    address : str
        The ``--superlink`` value.

    Returns
    -------
    tuple of (str, int)
        Host without brackets, and port.

    Raises
    ------
    ValueError
        If it is not ``HOST:PORT``.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--superlink {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def superlink_checks(
    superlink: str | None, ca: Path | None, *, insecure: bool = False
) -> list[Check]:
    """Reachability and clock skew, skipped (with the fix) without ``--superlink``.

    Parameters
    ----------
    superlink : str or None
        ``HOST:PORT``.
    ca : Path or None
        The federation's CA.
    insecure : bool
        Plain HTTP (tests only).

    Returns
    -------
    list of Check
        Two lines: ``SuperLink reachable`` and ``clock skew``.
    """
    if superlink is None:
        return [
            Check(
                name=REACH,
                status="skip",
                detail="no --superlink given",
                fix="pass --superlink HOST:PORT --ca CA.crt",
            ),
            Check(name=CLOCK, status="skip", detail="needs --superlink"),
        ]
    try:
        reach, skew = probe_superlink(superlink, ca, insecure=insecure)
    except (OSError, ValueError) as exc:
        reach = Check(
            name=REACH,
            status="fail",
            detail=str(exc),
            fix="pass --superlink HOST:PORT and --ca pointing at the CA file",
        )
        skew = Check(name=CLOCK, status="skip", detail="needs the SuperLink")
    return [reach, skew]


def probe_superlink(
    superlink: str, ca: Path | None, *, insecure: bool = False, timeout: float = 5.0
) -> tuple[Check, Check]:
    """``GET /health`` over HTTPS with the CA, and the clock skew from its Date.

    Parameters
    ----------
    superlink : str
        ``HOST:PORT``.
    ca : Path or None
        The federation's CA (required unless ``insecure``).
    insecure : bool
        Plain HTTP (tests only).
    timeout : float
        Seconds.

    Returns
    -------
    tuple of (Check, Check)
        Reachability and clock skew.
    """
    if ca is None and not insecure:
        skip = Check(name=REACH, status="skip", detail="no --ca given", fix="pass --ca")
        return skip, Check(name=CLOCK, status="skip", detail="needs the SuperLink")
    host, port = split_address(superlink)
    url = f"{'http' if insecure else 'https'}://{host}:{port}/health"
    context = None if insecure else ssl.create_default_context(cafile=str(ca))
    unreachable = Check(name=CLOCK, status="skip", detail="SuperLink unreachable")
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:  # noqa: S310 - http(s) only
            code = int(answer.status)
            date = answer.headers.get("Date")
    except urllib.error.URLError as exc:
        return _unreachable(url, exc.reason), unreachable
    except (OSError, ValueError) as exc:
        return Check(name=REACH, status="fail", detail=f"{url}: {exc}"), unreachable
    ok = Check(
        name=REACH,
        status="ok" if code == 200 else "fail",
        detail=f"{url} answered {code}" + (" over TLS" if not insecure else ""),
    )
    return ok, skew_check(date)


def _unreachable(url: str, reason: object) -> Check:
    fix = (
        "the certificate does not verify with this CA: use the federation's CA "
        "and a host name the certificate lists"
        if isinstance(reason, ssl.SSLError)
        else "check the address, that the SuperLink runs, and that this network "
        "allows outbound HTTPS to it (the site needs no inbound port)"
    )
    return Check(name=REACH, status="fail", detail=f"{url}: {reason}", fix=fix)


def skew_check(date: str | None) -> Check:
    """The clock skew against the SuperLink, from the ``Date`` of its answer.

    Parameters
    ----------
    date : str or None
        The HTTP ``Date`` header.

    Returns
    -------
    Check
        ``warn`` above :data:`MAX_SKEW_S`, ``fail`` above five times that,
        ``skip`` without a date.
    """
    if not date:
        return Check(name=CLOCK, status="skip", detail="the SuperLink sent no Date")
    remote = email.utils.parsedate_to_datetime(date)
    skew = (dt.datetime.now(dt.UTC) - remote).total_seconds()
    detail = f"{skew:+.0f} s against the SuperLink"
    fix = "synchronise this machine's clock (NTP: timedatectl set-ntp true)"
    if abs(skew) > 5 * MAX_SKEW_S:
        return Check(name=CLOCK, status="fail", detail=detail, fix=fix)
    if abs(skew) > MAX_SKEW_S:
        return Check(name=CLOCK, status="warn", detail=detail, fix=fix)
    return Check(name=CLOCK, status="ok", detail=detail)


__all__ = [
    "MAX_SKEW_S",
    "probe_superlink",
    "skew_check",
    "split_address",
    "superlink_checks",
]
