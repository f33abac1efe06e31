"""Collection cases: their life, their log, the operator queue, and what people do to them.

`lifecycle.py` holds the states and the one function every move goes through; `events.py`
the case's event log; `pauses.py` the pauses that end by themselves (promises kept or
broken); `queue.py` the operator queue; `casework.py`, `promises.py` and `disputes.py` the
operator actions; `casebook.py` the read-only views (a case's story, the queue); `handoffs.py`
the escalation steps past the queue (suspension, agency, write-off).
"""

from collectflow.flows.cases.casebook import (
    CALL_LIST_COLUMNS,
    QUEUE_ARTIFACT_COLUMNS,
    case_story,
    operator_queue,
)
from collectflow.flows.cases.casework import (
    ActionResult,
    close_case,
    confirm_write_off,
    pause_customer,
    resend_message,
    resume_customer,
)
from collectflow.flows.cases.disputes import mark_dispute, resolve_dispute
from collectflow.flows.cases.events import json_detail, record_events
from collectflow.flows.cases.handoffs import HandoffReport, deliver_handoffs, run_later_steps
from collectflow.flows.cases.lifecycle import STATES, transition, transition_case
from collectflow.flows.cases.pauses import review_pauses
from collectflow.flows.cases.promises import record_promise
from collectflow.flows.cases.queue import claim_item, complete_item, queue_cases, queue_invoices

__all__ = [
    "CALL_LIST_COLUMNS",
    "QUEUE_ARTIFACT_COLUMNS",
    "STATES",
    "ActionResult",
    "HandoffReport",
    "case_story",
    "claim_item",
    "close_case",
    "complete_item",
    "confirm_write_off",
    "deliver_handoffs",
    "json_detail",
    "mark_dispute",
    "operator_queue",
    "pause_customer",
    "queue_cases",
    "queue_invoices",
    "record_events",
    "record_promise",
    "resend_message",
    "resolve_dispute",
    "resume_customer",
    "review_pauses",
    "run_later_steps",
    "transition",
    "transition_case",
]
