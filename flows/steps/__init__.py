"""The steps of the daily run, in the order `run_day` (flows/pipeline.py) calls them.

Each step is plain functions over a database connection, the policy and the as-of date; the
Prefect flows wrap them as tasks. One module (or small package) per step:

- `prepare.py`: the policy's ladders and the business calendar, as tables.
- `assess.py`: balances and behaviour features; then, after the risk step, segments.
- `risk/`: each customer's risk of paying late, fitted on the ledger's own history.
- `diagnose.py`: gateway outages (`outage.py`), the cause of each owed invoice, refunds due.
- pauses: promises kept or broken, pauses ended (flows/cases/pauses.py).
- `plan.py`: cases opened and resolved, the stage due, messages with the cause's template.
- `contact.py`: who may be written to, and when.
- experiments: variants and holdouts (flows/measure/experiments.py).
- `escalate.py`: cases past their ladder to people; hand-offs (flows/cases/handoffs.py).
- `render/`: subject, text and HTML in the customer's language.
- `deliver.py`: send exactly once, record what happened.
- `outcomes.py`: credit payments to messages, decide outcomes.
- `summary.py`: what the run did, counted.
"""

from collectflow.flows.steps.assess import AssessReport, assess
from collectflow.flows.steps.contact import ContactReport, apply_contact_rules, contact
from collectflow.flows.steps.deliver import DeliveryReport, deliver_due, deliver_with_workers
from collectflow.flows.steps.diagnose import DiagnosisReport, diagnose
from collectflow.flows.steps.escalate import EscalationReport, escalate
from collectflow.flows.steps.outage import Notifier, alert_operators
from collectflow.flows.steps.outcomes import OutcomeReport, record_outcomes
from collectflow.flows.steps.plan import PlanReport, plan
from collectflow.flows.steps.prepare import prepare
from collectflow.flows.steps.render import TemplateCatalog, load_catalog, render_planned
from collectflow.flows.steps.summary import DaySummary, skipped_day, summarize_day

__all__ = [
    "AssessReport",
    "ContactReport",
    "DaySummary",
    "DeliveryReport",
    "DiagnosisReport",
    "EscalationReport",
    "Notifier",
    "OutcomeReport",
    "PlanReport",
    "TemplateCatalog",
    "alert_operators",
    "apply_contact_rules",
    "assess",
    "contact",
    "deliver_due",
    "deliver_with_workers",
    "diagnose",
    "escalate",
    "load_catalog",
    "plan",
    "prepare",
    "record_outcomes",
    "render_planned",
    "skipped_day",
    "summarize_day",
]
