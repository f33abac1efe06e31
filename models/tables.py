"""The ledger, the cases and the outbox, as tables.

External ids from the CSV contract are the primary keys of the ledger tables, so an import is
a plain upsert and the steps join on the ids the user knows. Money columns use `Money` (exact,
see models/money.py). Dates the business reasons about (due, attempted, planned, sent) are
stored as `date` in the business timezone next to any instant, so set-based SQL can compare
them without per-dialect timezone arithmetic.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from collectflow.models.instant import UtcDateTime
from collectflow.models.money import Money

OPEN_CASE = text("closed_on IS NULL")


def money_column(nullable: bool = False) -> Column:
    return Column(Money, nullable=nullable)


def instant_column(nullable: bool = True) -> Column:
    return Column(UtcDateTime, nullable=nullable)


class Customer(SQLModel, table=True):
    """A customer of the user's business, as imported from customers.csv."""

    __tablename__ = "customers"

    customer_id: str = Field(primary_key=True, max_length=64)
    name: str
    email: str
    locale: str = "en"
    timezone: str = "UTC"
    country: str | None = Field(default=None, max_length=2)
    account_manager_email: str | None = None
    do_not_contact: bool = False
    autopay: bool = False
    segment: str | None = Field(default=None, description="current segment, set by assess")
    segment_rule: str | None = None
    segment_since: date | None = None
    segment_features: str | None = Field(
        default=None, sa_type=Text, description="JSON: the features the rule read, on entry"
    )


class Invoice(SQLModel, table=True):
    """An invoice; what is owed is derived from its payments (see flows/ledger/balances.py)."""

    __tablename__ = "invoices"
    __table_args__ = (Index("ix_invoices_customer_due", "customer_id", "due_on"),)

    invoice_id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(foreign_key="customers.customer_id", max_length=64)
    number: str | None = None
    issued_on: date
    due_on: date = Field(index=True)
    amount: Decimal = Field(sa_column=money_column())
    currency: str = Field(max_length=3)
    status: str = Field(default="open", max_length=16, description="open|paid|void|disputed")
    payment_url: str | None = Field(
        default=None, sa_type=Text, description="the billing system's own https pay link"
    )


class Payment(SQLModel, table=True):
    """A payment attempt on an invoice: succeeded, failed or refunded."""

    __tablename__ = "payments"
    __table_args__ = (Index("ix_payments_invoice_status", "invoice_id", "status"),)

    payment_id: str = Field(primary_key=True, max_length=64)
    invoice_id: str = Field(foreign_key="invoices.invoice_id", max_length=64)
    attempted_at: datetime = Field(sa_column=instant_column(nullable=False))
    attempted_on: date = Field(index=True, description="attempted_at's date, business timezone")
    amount: Decimal = Field(sa_column=money_column())
    status: str = Field(max_length=16, description="succeeded|failed|refunded")
    failure_code: str | None = None
    gateway: str | None = None
    method: str | None = None


class InvoiceBalance(SQLModel, table=True):
    """Invoices with money still owed as of the last run's date (rebuilt by every run)."""

    __tablename__ = "invoice_balances"
    __table_args__ = (Index("ix_balances_customer", "customer_id", "due_on"),)

    invoice_id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(max_length=64)
    as_of: date
    due_on: date
    currency: str = Field(max_length=3)
    owed: Decimal = Field(sa_column=money_column())
    remindable: bool = Field(description="owed and not disputed: reminders may ask for it")
    cause: str | None = Field(
        default=None,
        max_length=32,
        description="why unpaid, set by diagnose; NULL: no failed attempt lately (no_attempt)",
    )


class CustomerFeatures(SQLModel, table=True):
    """Behaviour features of a customer as of a date, computed set-based by assess."""

    __tablename__ = "customer_features"

    customer_id: str = Field(primary_key=True, max_length=64)
    as_of: date
    invoices_issued: int = 0
    invoices_paid: int = 0
    on_time_ratio: float | None = None
    avg_days_late: float | None = None
    open_balance: Decimal = Field(sa_column=money_column())
    overdue_balance: Decimal = Field(sa_column=money_column())
    open_invoices: int = 0
    oldest_overdue_days: int = 0
    failed_payments_30d: int = 0
    disputes: int = 0
    tenure_days: int = 0
    p90_days_late: float | None = None
    failed_technical_30d: int = 0
    failed_customer_30d: int = 0
    broken_promises: int = 0
    failed_order_30d: int = 0
    very_late_ratio: float | None = None
    risk: float | None = Field(default=None, description="set by the risk step, before segments")


class SegmentChange(SQLModel, table=True):
    """History of segment moves: one row each time a customer's segment changes."""

    __tablename__ = "segment_history"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(index=True, max_length=64)
    as_of: date
    segment: str
    rule: str
    previous: str | None = None
    features: str | None = Field(
        default=None, sa_type=Text, description="JSON: the features the matching rule read"
    )


class Case(SQLModel, table=True):
    """A collection case: one customer's episode of money due, from first reminder to close."""

    __tablename__ = "cases"
    __table_args__ = (
        Index(
            "uq_cases_one_open_per_customer",
            "customer_id",
            unique=True,
            sqlite_where=OPEN_CASE,
            postgresql_where=OPEN_CASE,
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customers.customer_id", max_length=64)
    status: str = Field(default="open", max_length=16, description="see flows/cases/lifecycle.py")
    segment: str
    ladder: str
    stage_index: int = Field(default=-1, description="index of the last stage done, -1 none")
    stage: str | None = None
    last_stage_on: date | None = None
    opened_on: date
    escalated_on: date | None = None
    closed_on: date | None = None
    paused_until: date | None = Field(
        default=None, description="a pause ends after this date (promise grace, customer pause)"
    )
    resume_status: str | None = Field(
        default=None, max_length=16, description="the status a paused case returns to"
    )
    fast_track: bool = Field(
        default=False, description="plan the next stage now, ignoring offset and gap (once)"
    )


class Message(SQLModel, table=True):
    """The outbox: one row per message, from planned to sent, failed or suppressed."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_status_planned", "status", "planned_on"),
        # delivery's claims walk the due messages in id order: without it every claim reads
        # and sorts all planned messages (time quadratic in the outbox's size)
        Index("ix_messages_status_id", "status", "id"),
        Index("ix_messages_case", "case_id"),
        Index("ix_messages_customer", "customer_id", "status"),  # contact rules, per customer
        Index("ix_messages_message_id_header", "message_id_header"),  # inbound mail's matching
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=128, description="idempotency key")
    case_id: int = Field(foreign_key="cases.id")
    customer_id: str = Field(max_length=64)
    kind: str = Field(default="reminder", max_length=16, description="reminder|internal|campaign")
    stage: str
    stage_index: int
    template: str
    locale: str = "en"
    to_address: str
    planned_on: date
    status: str = Field(default="planned", max_length=16)
    status_reason: str | None = None
    subject: str | None = Field(default=None, description="set when rendered (see contents)")
    message_id_header: str | None = None
    rendered_at: datetime | None = Field(default=None, sa_column=instant_column())
    sent_at: datetime | None = Field(default=None, sa_column=instant_column())
    sent_on: date | None = None
    attempts: int = 0
    last_error: str | None = None
    cause: str | None = Field(default=None, max_length=32, description="diagnosis, see diagnose")
    experiment: str | None = Field(
        default=None, max_length=96, description="experiment this message was assigned in"
    )
    variant: str | None = Field(
        default=None, max_length=64, description="experiment arm: a template name, or holdout"
    )
    not_before: datetime | None = Field(
        default=None, sa_column=instant_column(), description="not sent earlier (quiet hours, cap)"
    )
    next_attempt_at: datetime | None = Field(
        default=None, sa_column=instant_column(), description="retry backoff after a 4xx/drop"
    )
    claimed_by: str | None = Field(default=None, max_length=96, description="delivery worker")
    lease_until: datetime | None = Field(
        default=None, sa_column=instant_column(), description="the claim is void after this"
    )


PLANNED_MESSAGE_COLUMNS = (
    "key",
    "case_id",
    "customer_id",
    "kind",
    "stage",
    "stage_index",
    "template",
    "locale",
    "to_address",
    "planned_on",
    "status",
)  # what planning a message sets, in this order; render and deliver fill the rest


class MessageContent(SQLModel, table=True):
    """A rendered message's body, apart from its row in the outbox.

    Written once when the message is rendered and read once when it is claimed, while its
    `messages` row changes status four or five times: kept in the row, a body of a few KB
    made every status change rewrite it (on SQLite a row past a page spills to overflow
    pages, and a claim and its result cost half as much again).

    `body_mime` is the email's MIME part exactly as it goes on the wire: the text and the
    HTML, quoted-printable, in ASCII (`mail.mime_body`). Render builds it once, delivery
    only adds the headers of the moment, and it is the record of what the customer got;
    `mail.mime_parts` reads the text and HTML back for previews.
    """

    __tablename__ = "message_contents"

    message_id: int = Field(foreign_key="messages.id", primary_key=True)
    body_mime: str = Field(sa_type=Text)
    link_expires_on: date | None = Field(
        default=None, description="last day of the body's answer link (none for internal mail)"
    )


class MessageItem(SQLModel, table=True):
    """An invoice a message asks for, with what was owed on it when planned."""

    __tablename__ = "message_items"

    message_id: int = Field(foreign_key="messages.id", primary_key=True)
    invoice_id: str = Field(foreign_key="invoices.invoice_id", primary_key=True, max_length=64)
    currency: str = Field(max_length=3)
    owed: Decimal = Field(sa_column=money_column())
    recovered: Decimal = Field(sa_column=Column(Money, nullable=False, server_default="0"))
    last_paid_on: date | None = None
    cause: str | None = Field(default=None, max_length=32, description="why it is unpaid")


class Outcome(SQLModel, table=True):
    """What followed a sent message: paid, partial, or no response once its window closed."""

    __tablename__ = "outcomes"

    message_id: int = Field(foreign_key="messages.id", primary_key=True)
    outcome: str = Field(max_length=16, description="paid|partial|no_response")
    first_paid_on: date | None = None
    days_to_pay: int | None = None
    decided_on: date


class CaseEvent(SQLModel, table=True):
    """The audit log: what happened to a case, when, by whom and why."""

    __tablename__ = "case_events"

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    at: datetime = Field(sa_column=instant_column(nullable=False))
    on: date
    kind: str = Field(max_length=32)
    actor: str = Field(default="system", max_length=64)
    detail: str | None = Field(default=None, sa_type=Text)


class QueueItem(SQLModel, table=True):
    """A case that needs a person, with the reason."""

    __tablename__ = "queue_items"
    __table_args__ = (UniqueConstraint("case_id", "reason", name="uq_queue_case_reason"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(
        default=None, foreign_key="cases.id", description="empty for a refund with no open case"
    )
    customer_id: str = Field(max_length=64)
    reason: str = Field(max_length=32)
    detail: str | None = None
    created_on: date
    resolved_on: date | None = None
    claimed_by: str | None = None


class LadderStage(SQLModel, table=True):
    """The policy's ladders and segments, flattened so set-based SQL can join on them."""

    __tablename__ = "ladder_stages"

    ladder: str = Field(primary_key=True, max_length=64)
    stage_index: int = Field(primary_key=True)
    stage: str
    offset_days: int
    template: str
    min_gap_days: int
    is_last: bool
    grace_days: int
    business_days: bool = Field(default=False, description="offset counts business days")
    business_gap: int = Field(default=0, description="business days at least since the last stage")
    business_total: int = Field(
        default=0, description="business days at least since the case's first message"
    )
    entry_days: int | None = Field(
        default=None, description="a first contact starts here from this many days overdue"
    )


class PaymentAttribution(SQLModel, table=True):
    """Which sent message each succeeded payment is credited to (last touch), rebuilt per run."""

    __tablename__ = "payment_attributions"
    __table_args__ = (Index("ix_attributions_message", "message_id", "invoice_id"),)

    payment_id: str = Field(primary_key=True, max_length=64)
    message_id: int = Field(foreign_key="messages.id")
    invoice_id: str = Field(max_length=64)
    amount: Decimal = Field(sa_column=money_column())
    paid_on: date
    first_message_id: int = Field(
        foreign_key="messages.id", description="first touch: the earliest message in the window"
    )


class RunRecord(SQLModel, table=True):
    """A business date the daily run completed (not dry runs): dates before the latest are
    history, and replaying them over a newer state would reopen settled cases."""

    __tablename__ = "runs"

    as_of: date = Field(primary_key=True)
    finished_at: datetime = Field(sa_column=instant_column(nullable=False))
    messages_planned: int = 0
    messages_sent: int = 0


class OutageWindow(SQLModel, table=True):
    """A span when one gateway failed far above its own baseline: those failures are ours.

    Open while `ended_on` is empty. `alerted_on` and `apologised_on` make the operators' alert
    and the customers' apology happen once per window.
    """

    __tablename__ = "outage_windows"
    __table_args__ = (UniqueConstraint("gateway", "started_on", name="uq_outage_gateway_start"),)

    id: int | None = Field(default=None, primary_key=True)
    gateway: str = Field(max_length=64)
    started_on: date
    ended_on: date | None = None
    attempts: int
    failures: int
    failure_rate: float
    baseline_rate: float
    alerted_on: date | None = None
    apologised_on: date | None = None


class Promise(SQLModel, table=True):
    """A promise to pay: reminders wait until `promised_on` plus the policy's grace days."""

    __tablename__ = "promises"
    __table_args__ = (Index("ix_promises_case_status", "case_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id")
    amount: Decimal = Field(sa_column=money_column())
    currency: str = Field(max_length=3)
    promised_on: date = Field(description="the date the customer said they would pay by")
    grace_until: date = Field(description="broken if not paid by the end of this date")
    made_on: date
    status: str = Field(default="open", max_length=16, description="open|kept|broken")
    decided_on: date | None = None
    actor: str = Field(max_length=64)


class Dispute(SQLModel, table=True):
    """A customer's dispute of one invoice: no reminder asks for it until an operator
    resolves the dispute (the whole case waits if nothing else is owed)."""

    __tablename__ = "disputes"
    __table_args__ = (Index("ix_disputes_case", "case_id", "resolved_on"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id")
    invoice_id: str = Field(foreign_key="invoices.invoice_id", max_length=64)
    reason: str
    opened_on: date
    resolved_on: date | None = None
    outcome: str | None = Field(default=None, max_length=16, description="upheld|rejected")
    credited: Decimal | None = Field(default=None, sa_column=money_column(nullable=True))


class EscalationStep(SQLModel, table=True):
    """An escalation step done for a case: at most once per (case, step).

    Steps with an effect outside the database (the suspension webhook, the agency export)
    are done in two moves: the row is written with the escalation, and `delivered_at` is set
    once the effect has happened, so a failed webhook is retried, never lost.
    """

    __tablename__ = "escalation_steps"
    __table_args__ = (UniqueConstraint("case_id", "step", name="uq_escalation_case_step"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id")
    step: str = Field(max_length=32)
    done_on: date
    delivered_at: datetime | None = Field(default=None, sa_column=instant_column())
    attempts: int = 0
    last_error: str | None = None
    reference: str | None = Field(default=None, description="e.g. the agency export file")


class MessageEvent(SQLModel, table=True):
    """The outbox's log: every status move of a message, when, by which worker and why."""

    __tablename__ = "message_events"
    __table_args__ = (Index("ix_message_events_message", "message_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="messages.id")
    at: datetime = Field(sa_column=instant_column(nullable=False))
    from_status: str = Field(max_length=16)
    to_status: str = Field(max_length=16)
    reason: str | None = Field(default=None, sa_type=Text)
    worker: str | None = Field(default=None, max_length=96)


class ContactBlock(SQLModel, table=True):
    """Who must not be written to: a customer who opted out, an address that bounced.

    Kept apart from `customers.do_not_contact` so a ledger import never lifts an opt-out.
    """

    __tablename__ = "contact_blocks"

    scope: str = Field(primary_key=True, max_length=16, description="customer|address")
    value: str = Field(primary_key=True, max_length=320, description="customer id, or address")
    reason: str = Field(max_length=16, description="opted_out|bounced")
    detail: str | None = None
    at: datetime = Field(sa_column=instant_column(nullable=False))


class BusinessDay(SQLModel, table=True):
    """A calendar per country for the dates plan needs: `ordinal` counts business days (no
    weekend, no public holiday) up to `day`, so business days between two dates are one
    subtraction in SQL. Country '' is the configured default. Rebuilt by each plan run."""

    __tablename__ = "business_calendar"

    country: str = Field(primary_key=True, max_length=2)
    day: date = Field(primary_key=True)
    ordinal: int


class CustomerAnswer(SQLModel, table=True):
    """A customer's answer to a message (the customer page, a one-click opt-out, a reply read
    back), recorded once: `key` fingerprints who answered what about which invoices, so the
    same answer posted twice is one row and one effect (flows/feedback/answers.py)."""

    __tablename__ = "customer_answers"
    __table_args__ = (Index("ix_customer_answers_message", "message_id", "answered_at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=64, description="sha256 of the answer's content")
    customer_id: str = Field(max_length=64, index=True)
    case_id: int | None = Field(default=None, foreign_key="cases.id")
    message_id: int | None = Field(default=None, foreign_key="messages.id")
    intent: str = Field(max_length=32)
    source: str = Field(max_length=16, description="page|one_click|reply|operator")
    detail: str | None = Field(default=None, sa_type=Text, description="JSON: invoices, fields")
    answered_at: datetime = Field(sa_column=instant_column(nullable=False))
    answered_on: date


class ClaimedPayment(SQLModel, table=True):
    """An invoice the customer says is paid: no reminder asks for it until `hold_until` while
    the payment is awaited; none arriving, the case joins the queue (`claimed_paid_not_found`)."""

    __tablename__ = "claimed_payments"
    __table_args__ = (Index("ix_claimed_payments_open", "status", "invoice_id"),)

    id: int | None = Field(default=None, primary_key=True)
    answer_id: int = Field(foreign_key="customer_answers.id")
    case_id: int | None = Field(default=None, foreign_key="cases.id")
    invoice_id: str = Field(foreign_key="invoices.invoice_id", max_length=64)
    claimed_on: date
    hold_until: date = Field(description="the last day reminders wait for the payment")
    owed_when_claimed: Decimal = Field(sa_column=money_column())
    reference: str | None = Field(default=None, max_length=100, description="the customer's")
    status: str = Field(default="open", max_length=16, description="open|found|not_found")
    decided_on: date | None = None


class InboundMail(SQLModel, table=True):
    """A mail read from the inbox, filed once: a bounce, an auto-reply or a customer's reply,
    what it was matched to, what it says and what became of it (flows/feedback/).

    `mail_key` is its Message-ID, or `sha256:<hex>` of its bytes when it has none, so reading
    the same mail again files nothing. The mail itself stays in the mailbox (Maildir `cur`, or
    the IMAP processed folder); `source` says where it was read.
    """

    __tablename__ = "inbound_mail"
    __table_args__ = (Index("ix_inbound_mail_status", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    mail_key: str = Field(unique=True, max_length=255, description="Message-ID, or sha256:<hex>")
    source: str = Field(max_length=255, description="maildir:<file> or imap:<folder>:<uid>")
    filed_at: datetime = Field(sa_column=instant_column(nullable=False))
    filed_on: date
    sent_at: datetime | None = Field(default=None, sa_column=instant_column())
    sender: str | None = Field(default=None, max_length=320)
    subject: str | None = None
    kind: str = Field(max_length=16, description="bounce|auto_reply|reply|unreadable")
    status: str = Field(
        max_length=16, description="pending|applied|queued|confirmed|read|recorded|unmatched"
    )
    matched_by: str | None = Field(default=None, max_length=16)
    message_id: int | None = Field(default=None, foreign_key="messages.id")
    customer_id: str | None = Field(default=None, max_length=64)
    case_id: int | None = Field(default=None, foreign_key="cases.id")
    intent: str | None = Field(default=None, max_length=16, description="what a reply says")
    confidence: float | None = None
    said_on: date | None = Field(default=None, description="the date a reply names")
    bounce: str | None = Field(
        default=None, max_length=16, description="hard|soft, then the DSN status code"
    )
    queue_item_id: int | None = Field(default=None, foreign_key="queue_items.id")
    excerpt: str | None = Field(default=None, sa_type=Text, description="its first lines")
    detail: str | None = Field(default=None, sa_type=Text, description="JSON: how it was read")


class RiskModelRecord(SQLModel, table=True):
    """The risk model of one run: fitted on the ledger's history, or the policy's prior
    scorecard when history was short; with how it did on the last held-out months."""

    __tablename__ = "risk_models"

    id: int | None = Field(default=None, primary_key=True)
    as_of: date = Field(index=True)
    kind: str = Field(max_length=16, description="fitted|prior")
    examples: int = Field(description="labelled invoices it learnt from")
    late_days: int
    model: str = Field(sa_type=Text, description="JSON: intercept, inputs with weight and scale")
    evaluation: str | None = Field(
        default=None, sa_type=Text, description="JSON: held-out AUC, Spearman, deciles"
    )
    note: str | None = None


class CustomerRisk(SQLModel, table=True):
    """History of risk scores: a row when a customer is first scored, and each time its risk
    moves by `risk.history_step` or more, or into another band (like segment_history)."""

    __tablename__ = "customer_risk"
    __table_args__ = (Index("ix_customer_risk_customer", "customer_id", "as_of"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(max_length=64)
    as_of: date
    risk: float
    band: str = Field(max_length=8, description="low|medium|high")
    previous: float | None = None
    model_id: int = Field(foreign_key="risk_models.id")
    reasons: str = Field(sa_type=Text, description="JSON: [[input, value, contribution], ...]")
