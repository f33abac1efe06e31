"""The SQL of a claim: which messages are due, which must not go out, taking them under a
worker's lease, and writing back what became of each.

Claiming is one transaction (`mail.delivery` runs it): take the due messages (PostgreSQL:
`FOR UPDATE SKIP LOCKED`, so workers in other processes take other rows; SQLite: one writer
at a time), re-check each just before sending (still owed, case not paused, customer not
opted out, address not bounced: otherwise `suppressed` with the reason), and mark the rest
`sending` under the worker's lease. The statements take the batch's ids as one parameter
(`models.in_ids`), so each is compiled (and on PostgreSQL prepared) once per delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import ColumnElement, Exists, Select

from collectflow.flows.cases.lifecycle import CLOSED, PAUSED_STATES
from collectflow.flows.ledger.balances import settled_amount, settling
from collectflow.flows.mail.contact import (
    INTERNAL,
    address_bounced,
    must_wait,
    opted_out,
    to_customer,
)
from collectflow.flows.mail.outbox import (
    BOUNCED,
    EVENT_COLUMNS,
    EVENTS,
    FAILED,
    IN_DOUBT,
    PLANNED,
    SENDING,
    SENT,
    SUPPRESSED,
    move_statement,
)
from collectflow.flows.mail.threads import has_thread
from collectflow.flows.policy.contact import Contact
from collectflow.models import (
    Case,
    Customer,
    Invoice,
    Message,
    MessageContent,
    MessageItem,
    Payment,
    in_ids,
)

MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__
CUSTOMERS = Customer.__table__
CASES = Case.__table__


class ClaimStatements:
    """The claim's statements, built once per delivery (its day and contact rules are fixed):
    each claim runs them with new parameters, and SQLAlchemy reuses their compiled form."""

    def __init__(self, as_of: date, contact: Contact):
        now = bindparam("now", type_=MESSAGES.c.not_before.type)
        self.due = (
            select(MESSAGES.c.id)
            .where(_due(as_of, now), MESSAGES.c.id > bindparam("after", type_=Integer))
            .order_by(MESSAGES.c.id)
            .limit(bindparam("size", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        self.due_and_customers = _due_and_customers(self.due)
        reason = _suppress_reason(as_of)
        self.suppress = move_statement(
            and_(in_ids(MESSAGES.c.id), reason.is_not(None)), PLANNED, SUPPRESSED, reason
        )
        wait = must_wait(as_of, contact.cap).label("wait")
        thread = has_thread().label("thread")  # most first reminders: none
        self.candidates = (
            select(
                MESSAGES.c.id,
                MESSAGES.c.key,
                MESSAGES.c.kind,
                MESSAGES.c.case_id,
                MESSAGES.c.customer_id,
                MESSAGES.c.to_address,
                MESSAGES.c.subject,
                CONTENTS.c.body_mime,
                CONTENTS.c.link_expires_on,
                MESSAGES.c.message_id_header,
                MESSAGES.c.attempts,
                CUSTOMERS.c.name.label("customer_name"),
                CUSTOMERS.c.timezone,
                _suppress_reason(as_of, customer_joined=True).label("suppress"),
                wait,
                thread,
            )
            .select_from(
                MESSAGES.outerjoin(
                    CUSTOMERS, CUSTOMERS.c.customer_id == MESSAGES.c.customer_id
                ).outerjoin(CONTENTS, CONTENTS.c.message_id == MESSAGES.c.id)
            )
            .where(in_ids(MESSAGES.c.id), MESSAGES.c.status == PLANNED)
            .order_by(MESSAGES.c.id)
        )
        self.claim = move_statement(
            in_ids(MESSAGES.c.id),
            PLANNED,
            SENDING,
            None,
            claimed_by=bindparam("worker", type_=String),
            lease_until=bindparam("lease", type_=MESSAGES.c.lease_until.type),
            attempts=MESSAGES.c.attempts + 1,
        )
        held_by_us = and_(
            in_ids(MESSAGES.c.id), MESSAGES.c.claimed_by == bindparam("worker", type_=String)
        )
        self.sent = {  # by the status a held message is in: sending, or unknown
            held: move_statement(
                held_by_us,
                held,
                SENT,
                None,
                sent_at=bindparam("sent_at", type_=MESSAGES.c.sent_at.type),
                sent_on=as_of,
                next_attempt_at=None,
                lease_until=None,
            )
            for held in (SENDING, IN_DOUBT)
        }


def _due_and_customers(due: Select[Any]) -> Select[Any]:
    """PostgreSQL: the due messages (locked, SKIP LOCKED), each with whether its customer is
    held by another worker's claim, after locking the customers of the rest, in one statement.

    Without the customer lock, two workers claiming at the same moment could each see the
    other's message to a customer as still planned, and send both: one over the cap. A
    message whose customer another worker holds waits for a later pass. SKIP LOCKED never
    waits, so no two claims can deadlock. On SQLite claims take turns and need no lock.
    """
    found = (
        due.with_only_columns(MESSAGES.c.id, MESSAGES.c.customer_id, MESSAGES.c.kind)
        .with_for_update(skip_locked=True, of=MESSAGES)
        .cte("found")
    )
    to_customers = found.c.kind != INTERNAL
    locked = (
        select(CUSTOMERS.c.customer_id)
        .where(CUSTOMERS.c.customer_id.in_(select(found.c.customer_id).where(to_customers)))
        .with_for_update(skip_locked=True, of=CUSTOMERS)
        .cte("locked")
    )
    known = select(CUSTOMERS.c.customer_id).where(CUSTOMERS.c.customer_id == found.c.customer_id)
    elsewhere = and_(
        to_customers,
        known.exists(),
        found.c.customer_id.not_in(select(locked.c.customer_id)),
    )
    return select(found.c.id, elsewhere.label("elsewhere")).order_by(found.c.id)


def _suppress_reason(as_of: date, customer_joined: bool = False) -> ColumnElement[str | None]:
    """Why the (correlated) planned message must not go out now, or NULL: the first rule
    that holds names the reason. With `customer_joined`, the statement joins the message's
    customer and the flag is read from that row."""
    # Lookups by key: an `IN (SELECT …)` list would read every customer and every case on
    # each claim, and so does PostgreSQL's hashed form of a correlated EXISTS on customers.
    do_not_contact = (
        CUSTOMERS.c.do_not_contact.is_(True)
        if customer_joined
        else select(CUSTOMERS.c.customer_id)
        .where(CUSTOMERS.c.customer_id == MESSAGES.c.customer_id, CUSTOMERS.c.do_not_contact)
        .correlate(MESSAGES)
        .exists()
    )
    case_status = (
        select(CASES.c.status)
        .where(CASES.c.id == MESSAGES.c.case_id)
        .correlate(MESSAGES)
        .scalar_subquery()
    )
    case_state = literal("case_") + case_status
    case_on_hold = case_status.in_(PAUSED_STATES | CLOSED)
    settled_reason = case((_items_owed(as_of, disputed=True), "disputed"), else_="paid_before_send")
    return case(
        (and_(to_customer(), do_not_contact), "do_not_contact"),
        (and_(to_customer(), opted_out()), "opted_out"),
        (address_bounced(), "address_bounced"),
        (and_(to_customer(), case_on_hold), case_state),
        (~_items_owed(as_of, disputed=False), settled_reason),
        else_=None,
    )


def _due(as_of: date, now: datetime | ColumnElement[Any]) -> ColumnElement[bool]:
    return and_(
        MESSAGES.c.status == PLANNED,
        MESSAGES.c.subject.is_not(None),
        MESSAGES.c.planned_on <= as_of,
        or_(MESSAGES.c.not_before.is_(None), MESSAGES.c.not_before <= now),
        or_(MESSAGES.c.next_attempt_at.is_(None), MESSAGES.c.next_attempt_at <= now),
    )


def _items_owed(as_of: date, disputed: bool) -> Exists:
    """Whether the message (correlated) asks for an invoice still owed as of `as_of`.

    A customer message's items are its own; an internal message's are those of its case.
    `disputed` picks owed invoices under dispute, or else the ones a reminder may ask for.
    """
    source = MESSAGES.alias("item_source")
    dispute = INVOICES.c.status == "disputed"
    return (
        select(ITEMS.c.invoice_id)
        .select_from(
            ITEMS.join(source, source.c.id == ITEMS.c.message_id).join(
                INVOICES, INVOICES.c.invoice_id == ITEMS.c.invoice_id
            )
        )
        .where(
            source.c.case_id == MESSAGES.c.case_id,
            or_(source.c.id == MESSAGES.c.id, MESSAGES.c.kind == "internal"),
            INVOICES.c.status.not_in(("paid", "void")),
            INVOICES.c.amount - _settled(as_of) > 0,
            dispute if disputed else ~dispute,
        )
        .exists()
    )


def _settled(as_of: date) -> ColumnElement[Any]:
    """Succeeded payments less refunds on the (correlated) invoice, up to `as_of`."""
    return (
        select(settled_amount())
        .where(
            PAYMENTS.c.invoice_id == INVOICES.c.invoice_id,
            PAYMENTS.c.attempted_on <= as_of,
            settling(),
        )
        .scalar_subquery()
    )


# Gives the message `n_id` its Message-ID `n_header`, unless it has one already.
ASSIGN_MESSAGE_ID = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("n_id"), MESSAGES.c.message_id_header.is_(None))
    .values(message_id_header=bindparam("n_header"))
)

# The messages of the batch that `worker` still holds, and the status each is held in
# (`sending`, or `unknown` if another worker judged the lease expired), locked for the write.
HELD = (
    select(MESSAGES.c.id, MESSAGES.c.status)
    .where(
        in_ids(MESSAGES.c.id),
        MESSAGES.c.claimed_by == bindparam("worker", type_=String),
        MESSAGES.c.status.in_((SENDING, IN_DOUBT)),
    )
    .with_for_update()
)


@dataclass(frozen=True)
class Result:
    """What happened to one claimed message, as it will be written back."""

    message_id: int
    status: str
    reason: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


def result_params(result: Result, worker: str) -> dict[str, Any]:
    """The parameters of `WRITE_RESULT` (and `WRITE_RESULT_LOGGED`) for one result: a message
    that is done for good (failed, bounced) or in doubt keeps who tried it last; a retry is
    released."""
    done = result.status in (FAILED, BOUNCED, IN_DOUBT)
    return {
        "b_id": result.message_id,
        "b_status": result.status,
        "b_reason": result.reason,
        "b_error": result.error,
        "b_next": result.next_attempt_at,
        "b_claimed_by": worker if done else None,
    }


# Writes one failure, bounce or retry (`result_params`); on SQLite its move is logged apart.
WRITE_RESULT = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        status_reason=bindparam("b_reason"),
        last_error=func.coalesce(bindparam("b_error", type_=String), MESSAGES.c.last_error),
        sent_at=None,
        sent_on=None,
        next_attempt_at=bindparam("b_next", type_=MESSAGES.c.next_attempt_at.type),
        claimed_by=bindparam("b_claimed_by", type_=String),
        lease_until=None,
    )
)
_RESULTS_MOVED = WRITE_RESULT.returning(
    MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.status_reason
).cte("moved")
# PostgreSQL: `WITH moved AS (UPDATE … RETURNING) INSERT INTO message_events SELECT … FROM
# moved`, run for each result: the result and its logged move in one statement.
WRITE_RESULT_LOGGED = (
    insert(EVENTS)
    .from_select(
        EVENT_COLUMNS,
        select(
            _RESULTS_MOVED.c.id,
            bindparam("log_at", type_=EVENTS.c.at.type),
            bindparam("b_old", type_=String),
            _RESULTS_MOVED.c.status,
            _RESULTS_MOVED.c.status_reason,
            bindparam("log_worker", type_=String),
        ),
    )
    .add_cte(_RESULTS_MOVED, nest_here=True)
)
