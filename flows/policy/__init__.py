"""The collections policy (`policy.yaml`): validated data, never code.

`document.py` is the whole document (segments, ladders, escalation, attribution, templates)
and `load_policy`; each other module is one section: `cases.py` (pauses: promises to pay),
`contact.py` (quiet hours, the message cap), `diagnosis.py` (failure classes, causes, outage
thresholds), `measurement.py` (cure window, experiment sample size), `feedback.py` (answer links and
what the customer's answers may do), `gateways.py` (where customers pay, in order).
"""

from collectflow.flows.policy.cases import Pauses
from collectflow.flows.policy.contact import Cap, Contact, QuietHours
from collectflow.flows.policy.diagnosis import CAUSES, Diagnosis, Outage
from collectflow.flows.policy.document import (
    FEATURES,
    Escalation,
    Ladder,
    Policy,
    Sender,
    condition_matches,
    condition_sql,
    load_policy,
)
from collectflow.flows.policy.feedback import Feedback
from collectflow.flows.policy.gateways import Gateway

__all__ = [
    "CAUSES",
    "FEATURES",
    "Cap",
    "Contact",
    "Diagnosis",
    "Escalation",
    "Feedback",
    "Gateway",
    "Ladder",
    "Outage",
    "Pauses",
    "Policy",
    "QuietHours",
    "Sender",
    "condition_matches",
    "condition_sql",
    "load_policy",
]
