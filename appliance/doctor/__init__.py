"""`routerctl doctor`: checks of a configuration against the real services it names.

Each check is a small async function over the real clients, bounded in time, that returns
rows of pass / warn / fail / skip with a one-line fix (see docs/doctor.md).
"""

from appliance.doctor.report import CheckResult, Status, any_failed
from appliance.doctor.runner import run_doctor
from appliance.doctor.target import DoctorTarget, load_target

__all__ = ["CheckResult", "DoctorTarget", "Status", "any_failed", "load_target", "run_doctor"]
