"""What a customer's answer does: one function for the page, the one-click opt-out and replies.

An answer names its customer, the message it answers (when known), the invoices it is about
and what the customer said. `apply_answer` checks it (`AnswerRefused` names the field and the
reason, so the page can show it next to the input), records it once (`customer_answers`, keyed
by a fingerprint of its content: the same answer posted twice is one row and one effect),
writes a `customer_response` case event, and applies its effect with the operators' own
actions, so an answer does exactly what `collectflow dispute` / `promise` / `opt-out` do:

- `already_paid`: reminders stop asking for those invoices for
  `policy.feedback.claimed_paid_hold_days` business days while the payment is awaited
  (`flows/feedback/claims.py` decides, each run, whether it came);
- `payment_failed`: the intent is recorded (the page shows today's pay links);
- `order_problem`: a dispute per invoice, the reason as its cause (reminders stop, case queued);
- `need_time`: a promise to pay by the date (at most `policy.feedback.max_promise_days` ahead);
- `unsubscribe`: the customer is opted out of everything but internal mail.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, insert, literal, select
from sqlalchemy.engine import RowMapping

from collectflow.flows.cases.casework import money_text
from collectflow.flows.cases.disputes import mark_dispute
from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.promises import record_promise
from collectflow.flows.errors import ActionRefused, CollectflowError
from collectflow.flows.feedback.claims import hold_claimed
from collectflow.flows.ledger.balances import invoice_positions, these_invoices
from collectflow.flows.mail.contact import OPTED_OUT, block
from collectflow.flows.policy.document import Policy
from collectflow.models import Case, CustomerAnswer, Invoice, Message, MessageItem

ANSWERS = CustomerAnswer.__table__
CASES = Case.__table__
INVOICES = Invoice.__table__
MESSAGES = Message.__table__
ITEMS = MessageItem.__table__

ALREADY_PAID = "already_paid"
PAYMENT_FAILED = "payment_failed"
ORDER_PROBLEM = "order_problem"
NEED_TIME = "need_time"
UNSUBSCRIBE = "unsubscribe"
INTENTS = (ALREADY_PAID, PAYMENT_FAILED, ORDER_PROBLEM, NEED_TIME, UNSUBSCRIBE)
ORDER_REASONS = (
    "not_received",
    "wrong_amount",
    "damaged",
    "returned_or_cancelled",
    "charged_twice",
    "other",
)
SOURCES = ("page", "one_click", "reply", "operator")
EVENT = "customer_response"

MAX_TEXT = 2000
MAX_REFERENCE = 100


class AnswerRefused(CollectflowError):
    """An answer that cannot be applied as given: `field` names the input (None: the whole
    answer), `reason` says why in a sentence the page shows beside it."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    """What the customer said, as the page's form, a one-click POST or a reply gives it."""

    customer_id: str
    intent: str
    source: str
    message_id: int | None = None
    invoices: tuple[str, ...] = ()
    paid_on: date | None = None
    amount: Decimal | None = None
    currency: str | None = None
    reference: str | None = None
    reason: str | None = None
    text: str | None = None
    promise_date: date | None = None
    actor: str = "customer"

    def fields(self) -> dict[str, str]:
        """The intent's own fields that were given, as text (the event's and the key's)."""
        given = {
            "paid_on": self.paid_on,
            "amount": self.amount,
            "currency": self.currency,
            "reference": self.reference,
            "reason": self.reason,
            "text": self.text,
            "promise_date": self.promise_date,
        }
        return {name: str(value) for name, value in given.items() if value not in (None, "")}


@dataclass(frozen=True)
class AnswerResult:
    """What recording an answer did: `recorded` is False when the same answer was there."""

    recorded: bool
    case_id: int | None
    changes: list[str] = field(default_factory=list)


def apply_answer(conn: Connection, policy: Policy, answer: Answer, today: date) -> AnswerResult:
    """Check, record once and apply the customer's answer (see the module docstring).

    Runs in the caller's transaction: a refused answer raises before anything is written, and
    an effect that fails rolls the record back with it.
    """
    _check_shape(answer, policy, today)
    message = _message_of(conn, answer)
    case = _open_case(conn, answer.customer_id)
    case_id = case["id"] if case is not None else None
    invoices = _invoices(conn, answer, message, case_id, today)
    key = answer_key(answer, invoices)
    if conn.execute(select(ANSWERS.c.id).where(ANSWERS.c.key == key)).first() is not None:
        return AnswerResult(False, case_id, ["this answer was already recorded"])
    detail = {
        "intent": answer.intent,
        "invoices": list(invoices),
        "fields": answer.fields(),
        "source": answer.source,
        "message_id": answer.message_id,
    }
    answer_id = conn.execute(
        insert(ANSWERS)
        .values(
            key=key,
            customer_id=answer.customer_id,
            case_id=case_id,
            message_id=answer.message_id,
            intent=answer.intent,
            source=answer.source,
            detail=json.dumps(detail, sort_keys=True),
            answered_at=datetime.now(UTC),
            answered_on=today,
        )
        .returning(ANSWERS.c.id)
    ).scalar_one()
    if case_id is not None:
        record_events(conn, select(literal(case_id)), EVENT, today, detail, answer.actor)
    changes = _apply(conn, policy, answer, case, invoices, answer_id, today)
    return AnswerResult(True, case_id, changes)


def answer_key(answer: Answer, invoices: tuple[str, ...]) -> str:
    """The fingerprint that makes an answer idempotent: who, about which message and invoices,
    what they said (not when, nor through which channel)."""
    content = [
        answer.customer_id,
        answer.message_id,
        answer.intent,
        sorted(invoices),
        answer.fields(),
    ]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def recent_answers(conn: Connection, message_id: int, since: datetime) -> int:
    """Answers recorded on the message since `since` (the page's rate limit counts them)."""
    return conn.execute(
        select(func.count()).where(
            ANSWERS.c.message_id == message_id, ANSWERS.c.answered_at >= since
        )
    ).scalar_one()


def _check_shape(answer: Answer, policy: Policy, today: date) -> None:
    """Refuse what no database state could make valid: unknown intent, bad reason or date."""
    if answer.intent not in INTENTS:
        raise AnswerRefused("intent", f"unknown intent {answer.intent!r}")
    if answer.source not in SOURCES:
        raise AnswerRefused("source", f"unknown source {answer.source!r}")
    if answer.text is not None and len(answer.text) > MAX_TEXT:
        raise AnswerRefused("text", f"at most {MAX_TEXT} characters")
    if answer.reference is not None and len(answer.reference) > MAX_REFERENCE:
        raise AnswerRefused("reference", f"at most {MAX_REFERENCE} characters")
    if answer.amount is not None and answer.amount <= 0:
        raise AnswerRefused("amount", "give a positive amount")
    if answer.intent == ALREADY_PAID and answer.paid_on is not None and answer.paid_on > today:
        raise AnswerRefused("paid_on", "the payment date cannot be in the future")
    if answer.intent == ORDER_PROBLEM and answer.reason not in ORDER_REASONS:
        raise AnswerRefused("reason", "choose what is wrong with the order or invoice")
    if answer.intent == NEED_TIME:
        latest = today + timedelta(days=policy.feedback.max_promise_days)
        if answer.promise_date is None:
            raise AnswerRefused("promise_date", "give the date you will pay by")
        if answer.promise_date < today:
            raise AnswerRefused("promise_date", "the date is in the past")
        if answer.promise_date > latest:
            raise AnswerRefused(
                "promise_date",
                f"the date can be at most {policy.feedback.max_promise_days} days from today"
                f" ({latest.isoformat()})",
            )


def _message_of(conn: Connection, answer: Answer) -> RowMapping | None:
    """The answered message; refused when it is not the customer's (a forged pairing)."""
    if answer.message_id is None:
        return None
    row = (
        conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.customer_id, MESSAGES.c.case_id).where(
                MESSAGES.c.id == answer.message_id
            )
        )
        .mappings()
        .first()
    )
    if row is None or row["customer_id"] != answer.customer_id:
        raise AnswerRefused(None, "this message is not known for this customer")
    return row


def _open_case(conn: Connection, customer_id: str) -> RowMapping | None:
    return (
        conn.execute(
            select(CASES).where(CASES.c.customer_id == customer_id, CASES.c.closed_on.is_(None))
        )
        .mappings()
        .first()
    )


def _invoices(
    conn: Connection,
    answer: Answer,
    message: RowMapping | None,
    case_id: int | None,
    today: date,
) -> tuple[str, ...]:
    """The invoices the answer is about, each checked to be the customer's (and the
    message's, when it names one); none chosen means every one of them still owed."""
    if message is None:
        chosen = select(INVOICES.c.invoice_id).where(INVOICES.c.customer_id == answer.customer_id)
    else:
        chosen = select(ITEMS.c.invoice_id).where(ITEMS.c.message_id == message["id"])
    positions = invoice_positions(today, chosen)
    query = select(positions.c.invoice_id, positions.c.owed).where(
        positions.c.customer_id == answer.customer_id
    )
    owned = {row.invoice_id: row.owed for row in conn.execute(query)}
    if answer.invoices:
        strangers = sorted(set(answer.invoices) - set(owned))
        if strangers:
            raise AnswerRefused("invoices", f"not an invoice of this message: {strangers[0]}")
        return tuple(sorted(set(answer.invoices)))
    owed = tuple(sorted(invoice for invoice, amount in owned.items() if amount > 0))
    if not owed and answer.intent in (ALREADY_PAID, ORDER_PROBLEM, NEED_TIME):
        raise AnswerRefused("invoices", "nothing is owed on these invoices any more")
    return owed


def _apply(
    conn: Connection,
    policy: Policy,
    answer: Answer,
    case: RowMapping | None,
    invoices: tuple[str, ...],
    answer_id: int,
    today: date,
) -> list[str]:
    """The answer's effect, through the same actions an operator uses."""
    intent = answer.intent
    if intent == UNSUBSCRIBE:
        done = block(
            conn,
            "customer",
            [answer.customer_id],
            OPTED_OUT,
            f"customer answer ({answer.source})",
            datetime.now(UTC),
        )
        return ["opted out: no more reminders" if done else "was already opted out"]
    if intent == PAYMENT_FAILED:
        return ["payment trouble recorded; today's pay links were shown"]
    if case is None:
        return ["no open case: nothing else to change"]
    if intent == ALREADY_PAID:
        return hold_claimed(conn, policy, case, invoices, answer_id, today, answer.reference)
    if intent == ORDER_PROBLEM:
        return _dispute(conn, answer, invoices, today)
    return _promise(conn, policy, answer, case, invoices, today)


def _dispute(conn: Connection, answer: Answer, invoices: tuple[str, ...], today: date) -> list[str]:
    reason = answer.reason or "other"
    cause = f"customer: {reason}" + (f" — {answer.text.strip()}" if answer.text else "")
    changes: list[str] = []
    for invoice_id in invoices:
        try:
            result = mark_dispute(conn, invoice_id, answer.actor, cause[:MAX_TEXT], today)
        except ActionRefused as refused:  # already in dispute, or paid meanwhile
            changes.append(f"invoice {invoice_id}: {refused}")
            continue
        changes += result.changes
    return changes


def _promise(
    conn: Connection,
    policy: Policy,
    answer: Answer,
    case: RowMapping,
    invoices: tuple[str, ...],
    today: date,
) -> list[str]:
    positions = invoice_positions(today, these_invoices(invoices))
    owed = conn.execute(
        select(positions.c.currency, func.sum(positions.c.owed))
        .where(positions.c.owed > 0)
        .group_by(positions.c.currency)
    ).all()
    if len(owed) != 1:
        raise AnswerRefused("invoices", "choose invoices in one currency for a promise")
    currency, total = owed[0][0], Decimal(owed[0][1])
    amount = answer.amount if answer.amount is not None else total
    assert answer.promise_date is not None  # _check_shape
    try:
        result = record_promise(
            conn,
            case["id"],
            amount,
            answer.promise_date,
            answer.actor,
            answer.text or "customer answer: needs more time",
            today,
            policy.pauses.promise_grace_days,
            currency,
        )
    except ActionRefused as refused:
        field_name = "amount" if "promised" in str(refused) else None
        raise AnswerRefused(field_name, str(refused)) from None
    except CollectflowError as refused:  # a case that cannot take a promise now
        raise AnswerRefused(None, f"a promise cannot be recorded now: {refused}") from None
    return [f"promise of {money_text(amount, currency)}", *result.changes]


def describe(detail: dict[str, Any]) -> str:
    """One line for an answer's event in the case story: intent, invoices, what was said."""
    fields = detail.get("fields") or {}
    said = ", ".join(f"{name} {value}" for name, value in sorted(fields.items()))
    invoices = ", ".join(detail.get("invoices") or []) or "no invoice"
    via = f" via {detail['source']}" if detail.get("source") else ""
    return f"{detail.get('intent')} on {invoices}{via}" + (f" ({said})" if said else "")
