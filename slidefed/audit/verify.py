"""Read and verify one audit log offline: records, signatures, chain and head file.

:func:`verify_log` authenticates every record by a trusted key: by the signed head
when the hash chain from the record to the line the head names is intact (the head's
signature covers that whole chain, so it vouches for every byte of it), and by the
record's own signature otherwise (no head, a head that lags, a broken chain, a record
under another key), or always with ``every_signature=True``.

It reports every broken rule with its line and one of the kinds of
:data:`~slidefed.audit.problems.ProblemKind` (see :mod:`slidefed.audit._chain` for
how ``edited`` and ``forged`` are told apart). The steps live in
:mod:`slidefed.audit._lines` (parse, authenticate) and :mod:`slidefed.audit._chain`
(the walk). An attacker who kept an old head file can still roll back the log
together with it; only a copy of the head held elsewhere, for example by the
coordinator, rules that out.

This module imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slidefed.audit._chain import Verifier
from slidefed.audit._lines import authenticate, load_head, parse
from slidefed.audit.problems import NumberedRecord, VerifyResult
from slidefed.common.audit.records import (
    DEFAULT_PUBLIC_KEY_NAME,
    AuditRecord,
    error_reason,
    head_path,
    parse_line,
    split_lines,
    verify_hint,
)
from slidefed.common.crypto import key_id, load_public_key
from slidefed.common.errors import AuditError


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for the block (nested pauses are fine).

    A large log becomes millions of small objects that all stay alive and form no
    cycles; the collector would scan them over and over for nothing, which costs
    about as much as the parsing itself. Callers that keep working on the records
    (the cross-check, the report) pause it around all of that work.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_log_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise AuditError(
            f"audit log {path} does not exist; check the path (site logs live in the "
            "site's audit directory)"
        ) from exc
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from exc


def read_records(path: Path) -> list[AuditRecord]:
    """Read every record of a log without checking signatures or the chain.

    Parameters
    ----------
    path : Path
        The log file.

    Returns
    -------
    list[AuditRecord]
        The records in file order.

    Raises
    ------
    AuditError
        If the file is missing, a line is not an audit record, or the last line is
        torn. The message names the file and the line.
    """
    records: list[AuditRecord] = []
    for number, (raw, torn) in enumerate(split_lines(_read_log_bytes(path)), 1):
        if torn:
            raise AuditError(
                f"{path}:{number}: the last line is torn (no newline at its end); "
                f"{verify_hint(path)}"
            )
        try:
            records.append(parse_line(raw))
        except ValueError as exc:
            raise AuditError(
                f"{path}:{number}: not an audit record ({error_reason(exc)}); "
                f"{verify_hint(path)}"
            ) from exc
    return records


def verify_data(
    path: Path,
    data: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    explicit_keys: bool,
    every_signature: bool = False,
    threads: int | None = None,
) -> tuple[VerifyResult, list[NumberedRecord]]:
    """Verify the bytes of the log ``path`` against its head file.

    Parameters
    ----------
    path : Path
        The log; its head file is ``<path>.head``.
    data : bytes
        The log's content.
    keys : Mapping[str, Ed25519PublicKey]
        Trusted keys by key id.
    explicit_keys : bool
        Whether the caller passed ``keys`` (for the wording of ``unknown_key``).
    every_signature : bool
        Check each record's own signature even where the head vouches for it.
    threads : int, optional
        Threads for signature checks (default: the CPU count, at most 8).

    Returns
    -------
    tuple[VerifyResult, list[NumberedRecord]]
        The result, and every line that parsed as a record, with its 1-based
        line number, whether or not it passed.
    """
    with collector_paused():
        lines = [
            parse(number, raw, torn)
            for number, (raw, torn) in enumerate(split_lines(data), 1)
        ]
        head_state = load_head(head_path(path))
        authenticate(
            lines, head_state, keys, every_signature=every_signature, threads=threads
        )
        verifier = Verifier(lines, keys, head_state, explicit_keys=explicit_keys)
        problems = verifier.run()
        records = [
            NumberedRecord(n.number, n.record) for n in lines if n.record is not None
        ]
    result = VerifyResult(
        ok=not problems, path=str(path), records=len(records), problems=problems
    )
    return result, records


def verify_log(
    path: Path,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> VerifyResult:
    """Check a log's records, signatures, chain and head file.

    Parameters
    ----------
    path : Path
        The log file; its head file is ``<path>.head``.
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys by :func:`slidefed.common.crypto.key_id`. When None, the key in
        ``audit_key.pub`` next to the log is trusted if that file exists, and every
        record is reported as ``unknown_key`` otherwise.
    every_signature : bool
        Check each record's own signature even where the signed head already
        vouches for the record through the hash chain (see the module docstring).
        Slower, and it finds nothing more unless the key holder itself wrote a
        record with a bad signature.

    Returns
    -------
    VerifyResult
        ``ok`` is True when no problem was found. ``problems`` are sorted by line,
        so the first one is the first bad record; later ones may follow from it.

    Raises
    ------
    AuditError
        If the log file is missing or unreadable.
    ConfigError
        If ``audit_key.pub`` next to the log is not an Ed25519 public key.
    """
    result, _ = verify_and_read(
        path, public_keys=public_keys, every_signature=every_signature
    )
    return result


def verify_and_read(
    path: Path,
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> tuple[VerifyResult, list[NumberedRecord]]:
    """Verify a log like :func:`verify_log` and return its records too.

    Reading and verifying in one pass spares callers that need both (the
    cross-check, the HTML report) a second parse of a large log.

    Parameters
    ----------
    path : Path
        The log file; its head file is ``<path>.head``.
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys, as for :func:`verify_log`.
    every_signature : bool
        As for :func:`verify_log`.

    Returns
    -------
    tuple[VerifyResult, list[NumberedRecord]]
        The result of :func:`verify_log`, and every line that parsed as a record
        with its 1-based line number, in file order, including records that
        failed a check (look them up in ``problems`` by line).

    Raises
    ------
    AuditError
        If the log file is missing or unreadable.
    ConfigError
        If ``audit_key.pub`` next to the log is not an Ed25519 public key.
    """
    data = _read_log_bytes(path)
    keys = _trusted_keys(path, public_keys)
    return verify_data(
        path,
        data,
        keys,
        explicit_keys=public_keys is not None,
        every_signature=every_signature,
    )


def _trusted_keys(
    path: Path, public_keys: Mapping[str, Ed25519PublicKey] | None
) -> dict[str, Ed25519PublicKey]:
    if public_keys is not None:
        return dict(public_keys)
    pub = path.parent / DEFAULT_PUBLIC_KEY_NAME
    if not pub.is_file():
        return {}
    key = load_public_key(pub)
    return {key_id(key): key}


__all__ = [
    "collector_paused",
    "read_records",
    "verify_and_read",
    "verify_data",
    "verify_log",
]
