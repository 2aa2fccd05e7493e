"""Check several audit logs together: each on its own, then against each other.

:func:`check_logs` verifies every log (:func:`slidefed.common.audit.log.verify_log`) and
then cross-checks what they claim:

- every update that a server log says it aggregated (``update_aggregated``) has a
  release with the same sha256 (``update_released``) in one of the site logs given,
  otherwise ``unmatched_update`` on the server log's line;
- no site's cumulative epsilon (``round_charged``: ``epsilon_after``) exceeds the
  maximum its policy allowed (``epsilon_max``), otherwise ``over_budget`` on the site
  log's line. This needs no server log;
- each record speaks for the actor of its log (``malformed`` otherwise), and one
  audit key for one actor across all the logs (``forged`` otherwise), so that a
  site cannot write records in another site's name with its own trusted key.

:func:`bench_verify` times the verifier on a generated log.

This module imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

import base64
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slidefed.common.audit._verify import collector_paused
from slidefed.common.audit.log import (
    GENESIS_HASH,
    Actor,
    AuditHead,
    AuditRecord,
    NumberedRecord,
    Problem,
    VerifyResult,
    canonical_json,
    head_path,
    line_hash,
    verify_and_read,
)
from slidefed.common.budget import EPSILON_TOLERANCE
from slidefed.common.crypto import key_id, load_public_key
from slidefed.common.errors import ConfigError


# ----------------------------------------------------------------- event payloads
class EventData(BaseModel):
    """Base of the payloads read from records; unknown fields are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


class RoundCharged(EventData):
    """``round_charged``: the privacy a site spent on a round, before training."""

    epsilon_after: float
    epsilon_max: float
    epsilon_round: float | None = None
    epsilon_before: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    unit: str | None = None
    accountant: str | None = None


class ArrayInfo(EventData):
    """One array of a released update."""

    name: str
    shape: list[int]
    dtype: str


class UpdateReleased(EventData):
    """``update_released``: a model update that left the site."""

    sha256: str = Field(min_length=1)
    bytes: int = Field(ge=0)
    arrays: list[ArrayInfo] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)


class UpdateAggregated(EventData):
    """``update_aggregated`` (server): an update that went into the global model."""

    node: str
    sha256: str = Field(min_length=1)
    bytes: int | None = None
    weight: float | None = None


class Reason(EventData):
    """Events that carry why something did not happen (refusals, blocks, errors)."""

    reason: str = ""
    node: str | None = None


class RunJoined(EventData):
    """``run_joined``: the config hash and the dataset fingerprint of a site."""

    config_hash: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)


class RoundCompleted(EventData):
    """``round_completed`` (server): how many sites trained in the round."""

    sites_trained: int | None = None


_Data = TypeVar("_Data", bound=EventData)


def event_data(record: AuditRecord, model: type[_Data]) -> _Data:
    """Read a record's payload as ``model``.

    Parameters
    ----------
    record : AuditRecord
        The record.
    model : type[EventData]
        The payload model of the record's event.

    Returns
    -------
    EventData
        The payload.

    Raises
    ------
    ValueError
        If the payload lacks a field of ``model`` or has one of the wrong type
        (a :class:`pydantic.ValidationError`).
    """
    return model.model_validate(record.data)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "data"
    return f"data.{where}: {error['msg']}"


# ----------------------------------------------------------------- loaded logs
@dataclass(frozen=True)
class LoadedLog:
    """A log, its verification result and the records that parsed.

    Attributes
    ----------
    path : Path
        The log file.
    result : VerifyResult
        What :func:`slidefed.common.audit.log.verify_and_read` found.
    records : list[NumberedRecord]
        Every line that parsed as a record, with its line number.
    """

    path: Path
    result: VerifyResult
    records: list[NumberedRecord]

    @property
    def actor(self) -> Actor | None:
        """``"site"`` or ``"server"`` as the first record says, None when empty."""
        return self.records[0].record.actor if self.records else None

    @property
    def actor_name(self) -> str | None:
        """The site's or server's name, as the first record says."""
        return self.records[0].record.actor_name if self.records else None


def load_public_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """Load every ``*.pub`` audit key in a folder.

    Parameters
    ----------
    folder : Path
        Folder of OpenSSH or PEM Ed25519 public keys.

    Returns
    -------
    dict[str, Ed25519PublicKey]
        The keys by :func:`slidefed.common.crypto.key_id`.

    Raises
    ------
    ConfigError
        If ``folder`` is not a folder, holds no ``*.pub`` file, or one of them is
        not an Ed25519 public key.
    """
    if not folder.is_dir():
        raise ConfigError(
            f"--keys {folder} is not a folder; give a folder of the sites' *.pub "
            "audit keys"
        )
    files = sorted(folder.glob("*.pub"))
    if not files:
        raise ConfigError(
            f"--keys {folder} holds no *.pub file; copy the sites' audit_key.pub "
            "files there (renamed per site)"
        )
    keys: dict[str, Ed25519PublicKey] = {}
    for file in files:
        key = load_public_key(file)
        keys[key_id(key)] = key
    return keys


def load_logs(
    paths: Sequence[Path],
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> list[LoadedLog]:
    """Verify and read each log.

    Parameters
    ----------
    paths : Sequence[Path]
        Audit logs (``audit.jsonl``, ``server-audit.jsonl``).
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys; None trusts the ``audit_key.pub`` beside each log.
    every_signature : bool
        Check each record's own signature even where the head vouches for it.

    Returns
    -------
    list[LoadedLog]
        One per path, in the order given.

    Raises
    ------
    AuditError
        If a log is missing or unreadable.
    ConfigError
        If a key beside a log is not an Ed25519 public key.
    """
    loaded = []
    for path in paths:
        result, records = verify_and_read(
            path, public_keys=public_keys, every_signature=every_signature
        )
        loaded.append(LoadedLog(path=path, result=result, records=records))
    return loaded


# ----------------------------------------------------------------- cross-check
def released_sha256s(logs: Sequence[LoadedLog]) -> set[str]:
    """Return the sha256 of every update that the site logs say was released.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Logs of any actor; only the ``update_released`` records of sites count.

    Returns
    -------
    set[str]
        The sha256 values (records without one are left out; :func:`cross_check`
        reports them).
    """
    found: set[str] = set()
    for log in logs:
        for _, record in log.records:
            if record.actor == "site" and record.event == "update_released":
                sha = record.data.get("sha256")
                if isinstance(sha, str):
                    found.add(sha)
    return found


def cross_check(logs: Sequence[LoadedLog]) -> list[list[Problem]]:
    """Check the logs against each other and against the sites' budgets.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Site and server logs; without a server log only the budgets are checked.

    Returns
    -------
    list[list[Problem]]
        For each log, in the order given, the problems found in it, by line:
        ``unmatched_update`` on a server's ``update_aggregated`` without a site
        release of that sha256, ``over_budget`` on a site's ``round_charged``
        whose cumulative epsilon exceeds its maximum, ``malformed`` on either
        record, or on an ``update_released`` without a sha256, when its payload
        cannot be read. Records must also speak for the actor of their log
        (``malformed`` otherwise), and one key for one actor across all logs
        (``forged`` on each record of a second actor under a key).
    """
    return _cross(logs)[0]


def _cross(logs: Sequence[LoadedLog]) -> tuple[list[list[Problem]], int]:
    """Return :func:`cross_check`'s problems and the number of matched updates."""
    released = released_sha256s(logs)
    site_names = sorted({log.actor_name or "" for log in logs if log.actor == "site"})
    speakers: dict[str, str] = {}  # key id -> the actor its first record names
    found: list[list[Problem]] = []
    matched = 0
    for log in logs:
        problems: list[Problem] = []
        first = log.records[0].record if log.records else None
        for line, record in log.records:
            identity = _identity(record)
            owner = speakers.setdefault(record.key_id, identity)
            if owner != identity:
                problems.append(_impersonation(line, record, owner))
            elif first is not None and identity != _identity(first):
                problems.append(_stranger(line, record, first))
            event = record.event
            if record.actor == "server":
                if event == "update_aggregated":
                    problem = _check_aggregated(line, record, released, site_names)
                    matched += problem is None
                    problems.extend([problem] if problem else [])
            elif event == "round_charged":
                problems.extend(_check_charge(line, record))
            elif event == "update_released":
                sha = record.data.get("sha256")
                if not isinstance(sha, str) or not sha:
                    problems.append(
                        Problem(
                            line=line,
                            kind="malformed",
                            message=f"update_released record seq {record.seq} has "
                            "no sha256 of the update",
                        )
                    )
        found.append(problems)
    return found, matched


def _identity(record: AuditRecord) -> str:
    return (
        record.actor
        if record.actor_name == record.actor
        else f"{record.actor} {record.actor_name}"
    )


def _impersonation(line: int, record: AuditRecord, owner: str) -> Problem:
    return Problem(
        line=line,
        kind="forged",
        message=f"record seq {record.seq} speaks for {_identity(record)} but is "
        f"signed by key {record.key_id}, which signs the records of {owner}: one "
        "audit key speaks for one actor only",
    )


def _stranger(line: int, record: AuditRecord, first: AuditRecord) -> Problem:
    return Problem(
        line=line,
        kind="malformed",
        message=f"record seq {record.seq} speaks for {_identity(record)} in the log "
        f"of {_identity(first)}: each actor writes its own log",
    )


def _where(record: AuditRecord) -> str:
    return f"run {record.run_id} round {record.round}"


def _malformed(line: int, record: AuditRecord, exc: ValidationError) -> Problem:
    return Problem(
        line=line,
        kind="malformed",
        message=f"{record.event} record seq {record.seq} has an unreadable payload "
        f"({_first_error(exc)})",
    )


def _check_aggregated(
    line: int,
    record: AuditRecord,
    released: set[str],
    site_names: Sequence[str],
) -> Problem | None:
    try:
        data = event_data(record, UpdateAggregated)
    except ValidationError as exc:
        return _malformed(line, record, exc)
    if data.sha256 in released:
        return None
    given = (
        f"the site logs given ({', '.join(site_names)})"
        if site_names
        else "no site log, since none was given; pass the site logs too"
    )
    return Problem(
        line=line,
        kind="unmatched_update",
        message=f"the server aggregated an update of node {data.node} "
        f"({_where(record)}, sha256 {data.sha256[:16]}...) that no site released:"
        f" no update_released with that sha256 in {given}",
    )


def _check_charge(line: int, record: AuditRecord) -> list[Problem]:
    try:
        data = event_data(record, RoundCharged)
    except ValidationError as exc:
        return [_malformed(line, record, exc)]
    if data.epsilon_after <= data.epsilon_max + EPSILON_TOLERANCE:
        return []
    return [
        Problem(
            line=line,
            kind="over_budget",
            message=f"site {record.actor_name} ({_where(record)}) reached a cumulative "
            f"epsilon of {data.epsilon_after:.6g}, over its policy maximum "
            f"{data.epsilon_max:.6g}",
        )
    ]


# ----------------------------------------------------------------- the result
class LogStatus(BaseModel):
    """One log's verdict: its own checks and the cross-check, by line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    actor: Actor | None
    actor_name: str | None
    records: int
    ok: bool
    problems: list[Problem]

    def describe(self) -> str:
        """Return who wrote the log: ``site hospital-a``, ``server``, ``no records``."""
        if self.actor is None:
            return "no records"
        if self.actor_name in (None, self.actor):
            return self.actor
        return f"{self.actor} {self.actor_name}"


class FirstProblem(BaseModel):
    """The first bad record of a check: the log, its line and what is wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    line: int
    kind: str
    message: str

    def where(self) -> str:
        """Return ``path:line: kind``."""
        return f"{self.path}:{self.line}: {self.kind}"

    def summary(self) -> str:
        """Return ``path:line: kind: message``."""
        return f"{self.where()}: {self.message}"


class CheckResult(BaseModel):
    """Outcome of :func:`check_logs`.

    Attributes
    ----------
    ok : bool
        True when no log has a problem.
    cross_checked : bool
        Whether a server log was given, so that aggregated updates were matched
        against site releases (site budgets are checked either way).
    updates_matched : int
        Aggregated updates that matched a site release.
    logs : list[LogStatus]
        One per log, in the order given.
    first_problem : FirstProblem or None
        The first bad record: the first problem of a log's own checks (chain,
        signatures, head), logs taken in the order given; when every log holds on
        its own, the first cross-check problem.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    cross_checked: bool
    updates_matched: int
    logs: list[LogStatus]
    first_problem: FirstProblem | None

    def summary(self) -> str:
        """Return the human-readable verdict, one line per log and a last line."""
        out: list[str] = []
        for log in self.logs:
            if log.ok:
                out.append(f"{log.path}: OK, {log.records} records ({log.describe()})")
                continue
            first = log.problems[0]
            more = len(log.problems) - 1
            tail = f" (and {more} more; --json lists all)" if more else ""
            out.append(f"{log.path}:{first.line}: {first.kind}: {first.message}{tail}")
        if self.cross_checked:
            out.append(
                f"cross-check: {self.updates_matched} aggregated update(s) matched a "
                "site release"
            )
        else:
            out.append(
                "cross-check: no server log given, so aggregated updates were not "
                "matched; site budgets were checked"
            )
        if self.first_problem is None:
            out.append("OK: every chain, signature and cross-check holds")
        else:
            out.append(f"FAILED: first bad record {self.first_problem.where()}")
        return "\n".join(out)


def summarise(logs: Sequence[LoadedLog]) -> CheckResult:
    """Cross-check loaded logs and combine everything into one result.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Logs as :func:`load_logs` returns them.

    Returns
    -------
    CheckResult
        The verdict.
    """
    crossed, matched = _cross(logs)
    statuses: list[LogStatus] = []
    first_own: FirstProblem | None = None
    first_cross: FirstProblem | None = None
    for log, extra in zip(logs, crossed, strict=True):
        own = log.result.problems
        if own and first_own is None:
            first_own = _first(log.path, own[0])
        if extra and first_cross is None:
            first_cross = _first(log.path, extra[0])
        problems = sorted([*own, *extra], key=lambda problem: problem.line)
        statuses.append(
            LogStatus(
                path=str(log.path),
                actor=log.actor,
                actor_name=log.actor_name,
                records=log.result.records,
                ok=not problems,
                problems=problems,
            )
        )
    first = first_own or first_cross
    return CheckResult(
        ok=first is None,
        cross_checked=any(log.actor == "server" for log in logs),
        updates_matched=matched,
        logs=statuses,
        first_problem=first,
    )


def _first(path: Path, problem: Problem) -> FirstProblem:
    return FirstProblem(
        path=str(path), line=problem.line, kind=problem.kind, message=problem.message
    )


def check_logs(
    paths: Sequence[Path],
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> CheckResult:
    """Verify each log and cross-check them (see the module docstring).

    Parameters
    ----------
    paths : Sequence[Path]
        Site logs and, optionally, server logs.
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys; None trusts the ``audit_key.pub`` beside each log.
    every_signature : bool
        Check each record's own signature even where the head vouches for it.

    Returns
    -------
    CheckResult
        The verdict; ``first_problem`` names the first bad record.

    Raises
    ------
    AuditError
        If a log is missing or unreadable.
    ConfigError
        If a key beside a log is not an Ed25519 public key.
    """
    with collector_paused():
        return summarise(
            load_logs(paths, public_keys=public_keys, every_signature=every_signature)
        )


# ----------------------------------------------------------------- benchmark
class BenchResult(BaseModel):
    """Timing of :func:`bench_verify`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: int
    bytes: int
    write_seconds: float
    verify_seconds: float
    verify_cpu_seconds: float = Field(
        description="CPU time of this process while verifying (all threads); on a "
        "busy machine it shows the work better than the wall-clock time"
    )
    ok: bool


def write_bench_log(path: Path, n: int, key: Ed25519PrivateKey) -> None:
    """Write a valid log of ``n`` site records and its head, quickly.

    The records alternate between ``round_charged`` and ``update_released`` with
    payloads of the size the client writes. They are built and signed directly
    rather than through :class:`slidefed.common.audit.log.AuditLog`, which syncs the
    disk after every record.

    Parameters
    ----------
    path : Path
        The log file to create (its head goes beside it).
    n : int
        Number of records, at least 1.
    key : Ed25519PrivateKey
        The signing key.
    """
    kid = key_id(key.public_key())
    prev = GENESIS_HASH
    lines: list[bytes] = []
    arrays = [
        {"dtype": "float32", "name": f"layer{i}.weight", "shape": [24, 24]}
        for i in range(6)
    ]
    for seq in range(n):
        rnd = seq // 2 + 1
        data: dict[str, Any]
        if seq % 2 == 0:
            event = "round_charged"
            data = {
                "accountant": "rdp",
                "delta": 0.0035714285714285713,
                "epsilon_after": 1e-4 * rnd,
                "epsilon_before": 1e-4 * (rnd - 1),
                "epsilon_max": 10.0,
                "epsilon_round": 1e-4,
                "noise_multiplier": 0.9560546875,
                "sample_rate": 0.25,
                "steps": 16,
                "unit": "patient",
            }
        else:
            event = "update_released"
            data = {
                "arrays": arrays,
                "bytes": 13824,
                "metrics": {"num-examples": 28, "train_loss": 0.69},
                "sha256": line_hash(seq.to_bytes(8, "big")),
            }
        fields: dict[str, Any] = {
            "actor": "site",
            "actor_name": "bench-site",
            "data": data,
            "event": event,
            "key_id": kid,
            "prev_hash": prev,
            "round": rnd,
            "run_id": 1,
            "schema_version": 1,
            "seq": seq,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        fields["signature"] = base64.b64encode(
            key.sign(canonical_json(fields))
        ).decode()
        line = canonical_json(fields)
        prev = line_hash(line)
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    payload = canonical_json({"hash": prev, "seq": n - 1})
    head = AuditHead(
        seq=n - 1,
        hash=prev,
        key_id=kid,
        signature=base64.b64encode(key.sign(payload)).decode(),
    )
    head_path(path).write_bytes(head.to_bytes())


def bench_verify(
    n: int = 100_000, *, directory: Path | None = None, every_signature: bool = False
) -> BenchResult:
    """Time :func:`slidefed.common.audit.log.verify_log` on a generated log.

    Run it as ``python -c "from slidefed.audit.check import bench_verify;
    print(bench_verify(100_000))"``; the design asks for under 10 s.

    Parameters
    ----------
    n : int
        Number of records.
    directory : Path, optional
        Where to write the log; a temporary folder, removed after, by default.
    every_signature : bool
        Check every record's own signature too (slower).

    Returns
    -------
    BenchResult
        Seconds to write and to verify (wall clock and CPU), and whether
        verification passed. The verification runs as ``slidefed audit verify``
        runs it, with Python's cycle collector paused.

    Raises
    ------
    ConfigError
        If ``n`` is below 1.
    """
    if n < 1:
        raise ConfigError(f"bench_verify needs at least 1 record, not {n}")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "audit.jsonl"
        key = Ed25519PrivateKey.generate()
        start = time.perf_counter()
        write_bench_log(path, n, key)
        written = time.perf_counter()
        cpu = time.process_time()
        with collector_paused():
            result, _ = verify_and_read(
                path,
                public_keys={key_id(key.public_key()): key.public_key()},
                every_signature=every_signature,
            )
        cpu_done = time.process_time()
        done = time.perf_counter()
        size = path.stat().st_size
    return BenchResult(
        records=result.records,
        bytes=size,
        write_seconds=round(written - start, 3),
        verify_seconds=round(done - written, 3),
        verify_cpu_seconds=round(cpu_done - cpu, 3),
        ok=result.ok,
    )


__all__ = [
    "EPSILON_TOLERANCE",
    "ArrayInfo",
    "BenchResult",
    "CheckResult",
    "EventData",
    "FirstProblem",
    "LoadedLog",
    "LogStatus",
    "Reason",
    "RoundCharged",
    "RoundCompleted",
    "RunJoined",
    "UpdateAggregated",
    "UpdateReleased",
    "bench_verify",
    "check_logs",
    "collector_paused",
    "cross_check",
    "event_data",
    "load_logs",
    "load_public_keys",
    "released_sha256s",
    "summarise",
    "write_bench_log",
]
