"""``slidefed site doctor``: one table of checks, each with its fix.

Every check returns a :class:`Check`; none raises. A check that needs something the
operator did not give (``--superlink``, ``--ca``) is skipped and says what to pass.
``site doctor`` exits non-zero when any check failed; warnings do not fail it.

Modules: :mod:`~slidefed.deploy.doctor.report` (the table, text and JSON),
:mod:`~slidefed.deploy.doctor.runner` (:func:`run_doctor`),
:mod:`~slidefed.deploy.doctor.data_checks` (config and data),
:mod:`~slidefed.deploy.doctor.prepare_checks` (the last preparation and its QC),
:mod:`~slidefed.deploy.doctor.key_checks` (node key and certificates),
:mod:`~slidefed.deploy.doctor.superlink_checks` (reachability, clock) and
:mod:`~slidefed.deploy.doctor.node_status` (how ``site start`` last ended).
Importing the package loads neither torch nor Flower.
"""

from slidefed.deploy.doctor.data_checks import check_approvals as check_approvals
from slidefed.deploy.doctor.data_checks import check_budget as check_budget
from slidefed.deploy.doctor.data_checks import check_cache as check_cache
from slidefed.deploy.doctor.data_checks import check_disk as check_disk
from slidefed.deploy.doctor.data_checks import check_gpu as check_gpu
from slidefed.deploy.doctor.data_checks import check_manifest as check_manifest
from slidefed.deploy.doctor.data_checks import check_slides as check_slides
from slidefed.deploy.doctor.key_checks import check_certificate as check_certificate
from slidefed.deploy.doctor.key_checks import check_node_key as check_node_key
from slidefed.deploy.doctor.node_status import NodeStatus as NodeStatus
from slidefed.deploy.doctor.node_status import clear_node_status as clear_node_status
from slidefed.deploy.doctor.node_status import (
    record_node_status as record_node_status,
)
from slidefed.deploy.doctor.prepare_checks import check_cohort as check_cohort
from slidefed.deploy.doctor.prepare_checks import check_modality as check_modality
from slidefed.deploy.doctor.prepare_checks import (
    check_preparation as check_preparation,
)
from slidefed.deploy.doctor.prepare_checks import check_qc as check_qc
from slidefed.deploy.doctor.report import Check as Check
from slidefed.deploy.doctor.report import DoctorReport as DoctorReport
from slidefed.deploy.doctor.report import render_json as render_json
from slidefed.deploy.doctor.report import render_text as render_text
from slidefed.deploy.doctor.runner import run_doctor as run_doctor
from slidefed.deploy.doctor.superlink_checks import (
    probe_superlink as probe_superlink,
)

__all__ = [
    "Check",
    "DoctorReport",
    "NodeStatus",
    "check_approvals",
    "check_budget",
    "check_cache",
    "check_certificate",
    "check_cohort",
    "check_disk",
    "check_gpu",
    "check_manifest",
    "check_modality",
    "check_node_key",
    "check_preparation",
    "check_qc",
    "check_slides",
    "clear_node_status",
    "probe_superlink",
    "record_node_status",
    "render_json",
    "render_text",
    "run_doctor",
]
