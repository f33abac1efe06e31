"""Campaigns: one-off sends an operator chooses in the Prefect UI, through the same outbox.

A campaign picks customers with an open case by a typed filter (segments, minimum balance,
oldest overdue, currency, locale), plans one `campaign` message per customer with the key
`campaign:<name>:<customer>` (so running it again never writes to anyone twice), lists the
invoices still owed on it, assigns variants and a holdout like a ladder stage, applies the
contact rules, renders with the same templates and is sent by the same delivery, which
re-checks everything just before sending. Its outcomes are measured like any reminder's.

The flow is a dry run by default: it does all of that in a transaction it rolls back, and
publishes a preview (how many, per variant, and a few rendered messages). Run it again with
`dry_run` off to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Connection,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
)

from collectflow.flows.cases.lifecycle import DISPUTED as DISPUTED_STATE
from collectflow.flows.cases.lifecycle import PAUSED, PROMISED, WRITTEN_OFF
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.feedback.message_links import message_links
from collectflow.flows.ledger import refresh_balances
from collectflow.flows.mail import mime_parts, plan_messages, sender_domain
from collectflow.flows.measure import Arms, record_assignments
from collectflow.flows.pipeline import business_today
from collectflow.flows.policy import Policy, load_policy
from collectflow.flows.steps import apply_contact_rules, deliver_due
from collectflow.flows.steps.render import INTERNAL_TEMPLATES, TemplateCatalog, render_planned
from collectflow.models import (
    Case,
    ContactBlock,
    Customer,
    EscalationStep,
    InvoiceBalance,
    Message,
    MessageContent,
    MessageItem,
    days_between,
    init_db,
    make_engine,
)

CASES = Case.__table__
CUSTOMERS = Customer.__table__
BALANCES = InvoiceBalance.__table__
MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
BLOCKS = ContactBlock.__table__
STEPS = EscalationStep.__table__
OTHER_CASES = CASES.alias("other_cases")
DISPUTED = BALANCES.alias("disputed")

Slug = Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]


class Audience(BaseModel):
    """Who a campaign writes to: customers with an open case matching every filter given,
    except those that must not be written to (EXCLUSIONS: handed to an agency, written off,
    disputed, paused, promised, opted out, on autopay, or owing nothing past due)."""

    model_config = ConfigDict(extra="forbid")

    segments: list[Slug] = Field(
        default_factory=list, description="only customers in these segments (empty: any)"
    )
    min_balance: Annotated[Decimal, Field(ge=0)] | None = Field(
        default=None, description="owing at least this much (in `currency` when given)"
    )
    min_days_overdue: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="oldest overdue invoice at least this many days past due"
    )
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = Field(
        default=None, description="only invoices in this currency count, and are listed"
    )
    locale: Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}$")] | None = Field(
        default=None, description="only customers writing in this language (fr: fr, fr-CA)"
    )
    include_not_yet_due: bool = Field(
        default=False, description="also list (and count) invoices not yet due"
    )


class CampaignSpec(BaseModel):
    """A campaign: its name (unique: one message per customer, ever), templates, holdout."""

    model_config = ConfigDict(extra="forbid")

    name: Slug
    template: Slug
    variants: list[Slug] = Field(default_factory=list)
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    audience: Audience = Audience()

    @property
    def arms(self) -> Arms | None:
        if not (self.variants or self.holdout):
            return None
        return Arms(f"campaign:{self.name}", (self.template, *self.variants), self.holdout)

    @property
    def templates(self) -> set[str]:
        return {self.template, *self.variants}


@dataclass
class Preview:
    """What a campaign run planned: counts per status and variant, and a few rendered messages."""

    name: str
    dry_run: bool
    planned: int
    statuses: dict[str, int]
    variants: dict[str, int]
    excluded: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, str]] = field(default_factory=list)
    sent: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


EXCLUSIONS = (
    "no_open_case",
    "written_off",
    "opted_out",
    "autopay",
    "agency",
    "disputed",
    "paused",
    "promised",
    "not_yet_due",
)
"""Why a customer the audience's filters pick is not written to, in the order they are judged:
a customer excluded for several reasons is counted under the first."""


def owed_by_customer(audience: Audience, as_of: date) -> Any:
    """Per customer owing anything (in the audience's currency, if any): the remindable money a
    campaign asks for (past due only, unless the audience includes invoices not yet due) and
    the oldest due date among it."""
    conditions = []
    if audience.currency:
        conditions.append(BALANCES.c.currency == audience.currency)
    asked = and_(
        BALANCES.c.remindable, true() if audience.include_not_yet_due else BALANCES.c.due_on < as_of
    )
    return (
        select(
            BALANCES.c.customer_id,
            func.sum(case((asked, BALANCES.c.owed), else_=0)).label("owed"),
            func.min(case((asked, BALANCES.c.due_on))).label("oldest_due"),
        )
        .where(*conditions)
        .group_by(BALANCES.c.customer_id)
        .subquery("owed")
    )


def audience_filter(audience: Audience, owed: Any, as_of: date) -> list[Any]:
    """The SQL conditions of the audience's own filters, over customers and what they owe."""
    conditions: list[Any] = []
    if audience.segments:
        conditions.append(CUSTOMERS.c.segment.in_(audience.segments))
    if audience.min_balance is not None:
        conditions.append(owed.c.owed >= audience.min_balance)
    if audience.min_days_overdue is not None:
        conditions.append(days_between(as_of, owed.c.oldest_due) >= audience.min_days_overdue)
    if audience.locale:
        language = audience.locale.lower()
        conditions.append(
            or_(
                func.lower(CUSTOMERS.c.locale) == language,
                func.lower(CUSTOMERS.c.locale).like(f"{language}-%"),
                func.lower(CUSTOMERS.c.locale).like(f"{language}\\_%", escape="\\"),
            )
        )
    return conditions


def exclusion(owed: Any) -> Any:
    """The first reason (EXCLUSIONS) not to write to the customer, NULL when none: over
    customers, what they owe, and their open case (outer-joined)."""
    customer = CUSTOMERS.c.customer_id
    blocked = exists().where(
        or_(
            and_(BLOCKS.c.scope == "customer", BLOCKS.c.value == customer),
            and_(BLOCKS.c.scope == "address", BLOCKS.c.value == func.lower(CUSTOMERS.c.email)),
        )
    )
    written_off = exists().where(
        OTHER_CASES.c.customer_id == customer, OTHER_CASES.c.status == WRITTEN_OFF
    )
    agency = exists().where(STEPS.c.case_id == CASES.c.id, STEPS.c.step == "agency")
    disputed_invoice = exists().where(
        DISPUTED.c.customer_id == customer, not_(DISPUTED.c.remindable)
    )
    opted_out = or_(
        CUSTOMERS.c.do_not_contact, func.coalesce(func.trim(CUSTOMERS.c.email), "") == "", blocked
    )
    return case(
        (and_(CASES.c.id.is_(None), written_off), "written_off"),
        (CASES.c.id.is_(None), "no_open_case"),
        (opted_out, "opted_out"),
        (CUSTOMERS.c.autopay, "autopay"),
        (agency, "agency"),
        (or_(CASES.c.status == DISPUTED_STATE, disputed_invoice), "disputed"),
        (CASES.c.status == PAUSED, "paused"),
        (CASES.c.status == PROMISED, "promised"),
        (func.coalesce(owed.c.owed, 0) <= 0, "not_yet_due"),
        else_=None,
    )


def audience(spec: CampaignSpec, as_of: date) -> Any:
    """Every customer the audience's filters pick, with their open case (if any) and the
    reason they are excluded (NULL: written to)."""
    owed = owed_by_customer(spec.audience, as_of)
    return (
        select(
            CUSTOMERS.c.customer_id,
            CASES.c.id.label("case_id"),
            exclusion(owed).label("excluded"),
        )
        .select_from(
            CUSTOMERS.join(owed, owed.c.customer_id == CUSTOMERS.c.customer_id).join(
                CASES,
                and_(CASES.c.customer_id == CUSTOMERS.c.customer_id, CASES.c.closed_on.is_(None)),
                isouter=True,
            )
        )
        .where(*audience_filter(spec.audience, owed, as_of))
        .subquery("audience")
    )


def excluded_counts(conn: Connection, spec: CampaignSpec, as_of: date) -> dict[str, int]:
    """How many customers the audience's filters picked but the campaign does not write to,
    per reason."""
    chosen = audience(spec, as_of)
    rows = conn.execute(
        select(chosen.c.excluded, func.count())
        .where(chosen.c.excluded.is_not(None))
        .group_by(chosen.c.excluded)
    ).all()
    return {reason: count for reason, count in rows}


def this_campaign(spec: CampaignSpec) -> Any:
    return and_(MESSAGES.c.kind == "campaign", MESSAGES.c.key.like(f"campaign:{spec.name}:%"))


def plan_campaign(conn: Connection, policy: Policy, spec: CampaignSpec, as_of: date) -> int:
    """Plan the campaign's messages and their items; assign arms; apply contact rules.

    Returns how many messages were planned now (none for customers written to before).
    """
    refresh_balances(conn, as_of)
    chosen = audience(spec, as_of)
    key = literal(f"campaign:{spec.name}:") + CUSTOMERS.c.customer_id
    source = (
        select(
            key,
            chosen.c.case_id,
            CUSTOMERS.c.customer_id,
            literal("campaign"),
            literal(spec.name),
            literal(0),
            literal(spec.template),
            CUSTOMERS.c.locale,
            CUSTOMERS.c.email,
            literal(as_of, MESSAGES.c.planned_on.type),
            literal("planned"),
        )
        .select_from(CUSTOMERS.join(chosen, chosen.c.customer_id == CUSTOMERS.c.customer_id))
        .where(chosen.c.excluded.is_(None))
    )
    planned = plan_messages(conn, source)
    add_campaign_items(conn, spec, as_of)
    if spec.arms is not None:
        rows = conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.customer_id).where(
                this_campaign(spec),
                MESSAGES.c.planned_on == as_of,
                MESSAGES.c.status == "planned",
                MESSAGES.c.experiment.is_(None),
            )
        ).all()
        record_assignments(conn, [(row.id, row.customer_id, spec.arms) for row in rows])
    apply_contact_rules(conn, policy, as_of)
    return planned


def add_campaign_items(conn: Connection, spec: CampaignSpec, as_of: date) -> None:
    """List on each new campaign message the remindable invoices still owed (in its currency)."""
    has_items = exists().where(ITEMS.c.message_id == MESSAGES.c.id)
    conditions = [this_campaign(spec), MESSAGES.c.planned_on == as_of, not_(has_items)]
    conditions.append(BALANCES.c.remindable)
    if not spec.audience.include_not_yet_due:
        conditions.append(BALANCES.c.due_on < as_of)
    if spec.audience.currency:
        conditions.append(BALANCES.c.currency == spec.audience.currency)
    source = (
        select(MESSAGES.c.id, BALANCES.c.invoice_id, BALANCES.c.currency, BALANCES.c.owed)
        .select_from(MESSAGES.join(BALANCES, BALANCES.c.customer_id == MESSAGES.c.customer_id))
        .where(*conditions)
    )
    conn.execute(
        insert(ITEMS).from_select(["message_id", "invoice_id", "currency", "owed"], source)
    )


def preview(
    conn: Connection, spec: CampaignSpec, as_of: date, dry_run: bool, planned: int, size: int
) -> Preview:
    """Count the campaign's messages of the day by status and variant; sample rendered ones."""
    today = and_(this_campaign(spec), MESSAGES.c.planned_on == as_of)
    statuses = conn.execute(
        select(func.coalesce(MESSAGES.c.status_reason, MESSAGES.c.status), func.count())
        .where(today)
        .group_by(func.coalesce(MESSAGES.c.status_reason, MESSAGES.c.status))
    ).all()
    variants = conn.execute(
        select(MESSAGES.c.variant, func.count()).where(today).group_by(MESSAGES.c.variant)
    ).all()
    sample = conn.execute(
        select(
            MESSAGES.c.customer_id, MESSAGES.c.template, MESSAGES.c.subject, CONTENTS.c.body_mime
        )
        .join_from(MESSAGES, CONTENTS, CONTENTS.c.message_id == MESSAGES.c.id, isouter=True)
        .where(today, MESSAGES.c.subject.is_not(None))
        .order_by(MESSAGES.c.id)
        .limit(size)
    ).mappings()
    return Preview(
        name=spec.name,
        dry_run=dry_run,
        planned=planned,
        statuses=dict(statuses),
        variants={variant or spec.template: count for variant, count in variants},
        sample=[_sample(row) for row in sample],
    )


def _sample(row: Mapping[str, Any]) -> dict[str, Any]:
    """A sampled message as the preview shows it: its text, read back from its MIME part."""
    body_text = mime_parts(row["body_mime"])[0] if row["body_mime"] else None
    return {key: row[key] for key in ("customer_id", "template", "subject")} | {
        "body_text": body_text
    }


def campaign_catalog(settings: Settings, policy: Policy, spec: CampaignSpec) -> TemplateCatalog:
    """The templates the campaign uses, with the policy's, validated before anything is planned."""
    catalog = TemplateCatalog(
        settings.templates, policy.templates() | INTERNAL_TEMPLATES | spec.templates
    )
    catalog.validate()
    return catalog


def run_campaign(
    settings: Settings, spec: CampaignSpec, as_of: date, dry_run: bool, sample_size: int
) -> Preview:
    """Plan, assign, render; then roll back (dry run) or commit and deliver."""
    policy = load_policy(settings.policy)
    catalog = campaign_catalog(settings, policy, spec)
    links = message_links(settings)  # no secret or public URL: stop before planning
    engine = make_engine(settings.database_url)
    init_db(engine)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            planned = plan_campaign(conn, policy, spec, as_of)
            render_planned(
                conn, catalog, policy, as_of, links=links, domain=sender_domain(settings)
            )
            result = preview(conn, spec, as_of, dry_run, planned, sample_size)
            result.excluded = excluded_counts(conn, spec, as_of)
            if dry_run:
                transaction.rollback()
                return result
            transaction.commit()
        result.sent = deliver_due(engine, settings, as_of, policy.contact).sent
        return result
    finally:
        engine.dispose()


@flow(name="campaign")
def campaign(
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", description="unique campaign name")],
    template: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")],
    audience: Audience = Audience(),
    variants: list[str] | None = None,
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    dry_run: bool = True,
    as_of: date | None = None,
    sample_size: Annotated[int, Field(ge=0, le=20)] = 3,
) -> dict[str, Any]:
    """A one-off send to the customers the audience picks; a dry run (default) only previews."""
    settings = get_settings()
    spec = CampaignSpec(
        name=name, template=template, variants=variants or [], holdout=holdout, audience=audience
    )
    result = run_campaign(settings, spec, as_of or business_today(settings), dry_run, sample_size)
    create_markdown_artifact(
        key=f"campaign-{name.replace('_', '-')}",
        markdown=preview_markdown(result),
        description=f"Campaign {name}" + (" (dry run)" if dry_run else ""),
    )
    return result.to_dict()


def preview_markdown(result: Preview) -> str:
    """The preview as markdown: counts, then the sample messages."""
    mode = "Dry run: nothing stored, nothing sent." if result.dry_run else f"Sent {result.sent}."
    lines = [f"# Campaign {result.name}", mode, "", f"Planned now: {result.planned}", ""]
    lines += ["| status | messages |", "|---|---:|"]
    lines += [f"| {status} | {count} |" for status, count in sorted(result.statuses.items())]
    lines += ["", "| excluded because | customers |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in sorted(result.excluded.items())]
    lines += ["", "| variant | messages |", "|---|---:|"]
    lines += [f"| {variant} | {count} |" for variant, count in sorted(result.variants.items())]
    for message in result.sample:
        lines += ["", f"## {message['subject']}", f"template `{message['template']}`", ""]
        lines += ["```", message["body_text"] or "", "```"]
    return "\n".join(lines)
