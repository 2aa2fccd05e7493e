"""The auditor's tools: verify audit logs, cross-check them, render the report.

- :mod:`~slidefed.audit.verify`: one log's records, signatures, chain and head;
- :mod:`~slidefed.audit.load`: trusted keys, and logs verified and read;
- :mod:`~slidefed.audit.cross_check`: logs against each other and the budgets;
- :mod:`~slidefed.audit.check`: the verdict of both (``slidefed audit verify``);
- :mod:`slidefed.audit.report`: the HTML page (``slidefed audit report``); import
  it from there, it is not re-exported, so that verifying does not load jinja2.

Nothing here imports torch, Flower or Opacus: an auditor's install needs none of
them. The logs themselves are written by :mod:`slidefed.common.audit`.
"""

from slidefed.audit.check import CheckResult as CheckResult
from slidefed.audit.check import FirstProblem as FirstProblem
from slidefed.audit.check import LogStatus as LogStatus
from slidefed.audit.check import check_logs as check_logs
from slidefed.audit.check import summarise as summarise
from slidefed.audit.cross_check import cross_check as cross_check
from slidefed.audit.cross_check import released_sha256s as released_sha256s
from slidefed.audit.load import LoadedLog as LoadedLog
from slidefed.audit.load import load_logs as load_logs
from slidefed.audit.load import load_public_keys as load_public_keys
from slidefed.audit.problems import NumberedRecord as NumberedRecord
from slidefed.audit.problems import Problem as Problem
from slidefed.audit.problems import ProblemKind as ProblemKind
from slidefed.audit.problems import VerifyResult as VerifyResult
from slidefed.audit.verify import collector_paused as collector_paused
from slidefed.audit.verify import read_records as read_records
from slidefed.audit.verify import verify_and_read as verify_and_read
from slidefed.audit.verify import verify_log as verify_log

__all__ = [
    "CheckResult",
    "FirstProblem",
    "LoadedLog",
    "LogStatus",
    "NumberedRecord",
    "Problem",
    "ProblemKind",
    "VerifyResult",
    "check_logs",
    "collector_paused",
    "cross_check",
    "load_logs",
    "load_public_keys",
    "read_records",
    "released_sha256s",
    "summarise",
    "verify_and_read",
    "verify_log",
]
