"""Deployment: a site's node, its code approval and doctor, and the coordinator's setup.

- :mod:`~slidefed.deploy.site_node`: the site's keys and the two commands of
  ``slidefed site start`` (``flower-supernode`` and the approving executor);
  :mod:`~slidefed.deploy.supervisor` runs them side by side.
- :mod:`~slidefed.deploy.approval`: the list of approved app versions (FAB hashes);
  :mod:`~slidefed.deploy.approval_gate`: where it is enforced, inside Flower's
  ClientApp process (tied to one Flower version; fails closed on any other).
- :mod:`~slidefed.deploy.doctor`: ``slidefed site doctor``'s checks.
- :mod:`~slidefed.deploy.coordinator` and :mod:`~slidefed.deploy.registration`:
  ``slidefed server init/start`` and ``server register-site``.

Importing the package loads neither torch nor Flower; the gate imports Flower only
when it runs.
"""

from slidefed.deploy.approval import APPROVALS_FILE as APPROVALS_FILE
from slidefed.deploy.approval import AppNotApproved as AppNotApproved
from slidefed.deploy.approval import ApprovedApps as ApprovedApps
from slidefed.deploy.approval import approvals_path as approvals_path
from slidefed.deploy.approval import approve_app as approve_app
from slidefed.deploy.approval import load_approved_apps as load_approved_apps
from slidefed.deploy.coordinator import init_coordinator as init_coordinator
from slidefed.deploy.coordinator import superlink_command as superlink_command
from slidefed.deploy.doctor import DoctorReport as DoctorReport
from slidefed.deploy.doctor import run_doctor as run_doctor
from slidefed.deploy.registration import register_site as register_site
from slidefed.deploy.site_node import SiteLaunch as SiteLaunch
from slidefed.deploy.site_node import build_site_launch as build_site_launch
from slidefed.deploy.site_node import ensure_node_key as ensure_node_key
from slidefed.deploy.supervisor import SupervisedExit as SupervisedExit
from slidefed.deploy.supervisor import supervise as supervise

__all__ = [
    "APPROVALS_FILE",
    "AppNotApproved",
    "ApprovedApps",
    "DoctorReport",
    "SiteLaunch",
    "SupervisedExit",
    "approvals_path",
    "approve_app",
    "build_site_launch",
    "ensure_node_key",
    "init_coordinator",
    "load_approved_apps",
    "register_site",
    "run_doctor",
    "superlink_command",
    "supervise",
]
