"""One business day of collections, step by step, as plain functions over a run context.

`run_day` is the whole pipeline on one screen: each line one step, each step a module of
flows/steps/ (or, for pauses and experiments, of cases/ and measure/) called through a thin
`*_step` function that opens the step's transaction. The daily Prefect flow and the catch-up
range flow both run it; the daily flow wraps each step in a Prefect task (visible in the UI),
the range flow runs a whole day as one task so that replaying a year stays well under
Prefect's comfortable task-run volume.

A dry run does everything but deliver inside one database transaction that is rolled back at
the end: it decides and renders for real, and stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, func, insert, select, update

from collectflow.flows.cases import HandoffReport, deliver_handoffs, review_pauses
from collectflow.flows.config import Settings
from collectflow.flows.feedback.claims import review_claims
from collectflow.flows.feedback.message_links import MessageLinks, message_links
from collectflow.flows.mail import sender_domain
from collectflow.flows.measure import assign_stage_experiments
from collectflow.flows.policy import Policy, load_policy
from collectflow.flows.steps import (
    AssessReport,
    ContactReport,
    DaySummary,
    DeliveryReport,
    DiagnosisReport,
    EscalationReport,
    Notifier,
    OutcomeReport,
    PlanReport,
    TemplateCatalog,
    alert_operators,
    contact,
    deliver_due,
    diagnose,
    escalate,
    load_catalog,
    plan,
    prepare,
    record_outcomes,
    render_planned,
    skipped_day,
    summarize_day,
)
from collectflow.flows.steps.assess import measure_behaviour, segment_customers
from collectflow.flows.steps.risk import RiskReport, score_risk
from collectflow.models import Message, RunRecord, init_db, make_engine

T = TypeVar("T")
Call = Callable[..., Any]
MESSAGES = Message.__table__
RUNS = RunRecord.__table__


@dataclass
class RunContext:
    """What every step needs: settings, policy, templates, the answer links' signer, the
    database, dry-run or not."""

    settings: Settings
    policy: Policy
    catalog: TemplateCatalog
    links: MessageLinks
    engine: Engine
    dry_run: bool = False
    shared: Connection | None = field(default=None, repr=False)
    notifier: Notifier | None = None  # who hears of what needs a person (outages)

    @property
    def message_domain(self) -> str:
        """The domain of the Message-IDs, from the sender address (render names messages)."""
        return sender_domain(self.settings)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection for one step: its own transaction, or the dry run's shared one."""
        if self.shared is not None:
            yield self.shared
            return
        with self.engine.begin() as conn:
            yield conn


@contextmanager
def open_run(
    settings: Settings, dry_run: bool = False, notifier: Notifier | None = None
) -> Iterator[RunContext]:
    """Load policy and templates, connect, and for a dry run hold one transaction to discard.

    Without a `notifier`, operator alerts wait (unsent, not marked sent) for a run that has one.
    Without a link secret or a public URL the run stops here (ConfigError): every customer
    message carries a signed answer link.
    """
    policy = load_policy(settings.policy)
    catalog = load_catalog(settings.templates, policy)  # a broken template fails here
    links = message_links(settings)
    engine = make_engine(settings.database_url)
    init_db(engine)
    try:
        if not dry_run:
            yield RunContext(settings, policy, catalog, links, engine, notifier=notifier)
            return
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                yield RunContext(
                    settings, policy, catalog, links, engine, dry_run=True, shared=conn,
                    notifier=notifier,
                )  # fmt: skip
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def business_today(settings: Settings) -> date:
    """Today in the business timezone: the default as-of date."""
    return datetime.now(ZoneInfo(settings.timezone)).date()


def direct(step: Callable[..., T], *args: Any) -> T:
    """Run a step as a plain function call."""
    return step(*args)


def run_day(
    ctx: RunContext, as_of: date, skip_delivery: bool = False, call: Call = direct
) -> DaySummary:
    """The daily run of DESIGN.md, top to bottom, for one business date.

    A date before the latest completed run is history: it is skipped, not replayed over the
    newer state (that would reopen cases settled since). The latest date itself runs again
    safely: every step is idempotent for it.
    """
    latest = call(latest_run, ctx)
    if latest is not None and as_of < latest:
        return skipped_day(as_of, latest, ctx.dry_run)
    first_new_id = call(next_message_id, ctx)
    call(prepare_step, ctx, as_of)  # ladders and business calendar as tables
    call(assess_step, ctx, as_of)  # 1 balances, behaviour features
    call(risk_step, ctx, as_of)  #   risk: fitted on the ledger's history, scored, stored
    assessed = call(segment_step, ctx, as_of)  #   segments (their rules may read risk)
    call(diagnose_step, ctx, as_of)  # 2 outages, cause of each owed invoice, refunds
    if not ctx.dry_run:
        call(alert_step, ctx, as_of)  #   operators told of new outages
    call(pauses_step, ctx, as_of)  #   promises kept or broken, pauses ended
    planned = call(plan_step, ctx, as_of)  # 3 cases, the stage due, messages by cause
    call(contact_step, ctx, as_of)  #   who may be written to, and from when
    call(experiments_step, ctx, as_of)  #   variants and holdouts
    escalated = call(escalate_step, ctx, as_of)  # 6 queue, account managers, disputes
    if not ctx.dry_run:
        call(handoff_step, ctx, as_of)  #   suspension signals, agency files
    rendered = call(render_step, ctx, as_of)  # 4 subject, text, HTML
    delivered = None
    if not (ctx.dry_run or skip_delivery):
        delivered = call(deliver_step, ctx, as_of)  # 5 send exactly once
    outcomes = call(outcomes_step, ctx, as_of)  # 7 payments credited, outcomes
    summary = call(
        summary_step,
        ctx,
        as_of,
        first_new_id,
        assessed,
        planned,
        escalated,
        rendered,
        delivered,
        outcomes,
    )
    if not ctx.dry_run:
        call(record_run, ctx, summary)
    return summary


def latest_run(ctx: RunContext) -> date | None:
    """The latest business date a (non-dry) run completed."""
    with ctx.connection() as conn:
        return conn.execute(select(func.max(RUNS.c.as_of))).scalar_one()


def record_run(ctx: RunContext, summary: DaySummary) -> None:
    """Remember that `summary.as_of` was run (again, when rerun)."""
    planned = sum(sum(statuses.values()) for statuses in summary.messages.values())
    values = {
        "finished_at": datetime.now(UTC),
        "messages_planned": planned,
        "messages_sent": summary.sent,
    }
    with ctx.connection() as conn:
        updated = conn.execute(
            update(RUNS).where(RUNS.c.as_of == summary.as_of).values(**values)
        ).rowcount
        if not updated:
            conn.execute(insert(RUNS).values(as_of=summary.as_of, **values))


def next_message_id(ctx: RunContext) -> int:
    """The id the next planned message will have: what this run plans is at or above it."""
    with ctx.connection() as conn:
        return conn.execute(select(func.coalesce(func.max(MESSAGES.c.id), 0))).scalar_one() + 1


def prepare_step(ctx: RunContext, as_of: date) -> None:
    """The policy's ladders and the business calendar, as tables the steps join on."""
    with ctx.connection() as conn:
        prepare(conn, ctx.policy, as_of)


def assess_step(ctx: RunContext, as_of: date) -> int:
    """Balances and behaviour features as of the date; returns the invoices still owing."""
    with ctx.connection() as conn:
        return measure_behaviour(conn, ctx.policy, as_of)


def risk_step(ctx: RunContext, as_of: date) -> RiskReport:
    """Each customer's risk of paying late, from a model fitted on the ledger's own history
    (before segmenting, so that segment rules can read it)."""
    with ctx.connection() as conn:
        return score_risk(conn, ctx.policy, as_of)


def segment_step(ctx: RunContext, as_of: date) -> AssessReport:
    """Segments from the day's features and risk; moves kept in segment_history."""
    with ctx.connection() as conn:
        return segment_customers(conn, ctx.policy, as_of)


def diagnose_step(ctx: RunContext, as_of: date) -> DiagnosisReport:
    """Gateway outages, the cause of each owed invoice, refunds due."""
    with ctx.connection() as conn:
        return diagnose(conn, ctx.policy, as_of)


def alert_step(ctx: RunContext, as_of: date) -> int:
    """Tell operators of outages not alerted yet (a run without a notifier leaves them)."""
    if ctx.notifier is None:
        return 0
    with ctx.connection() as conn:
        return alert_operators(conn, ctx.policy, as_of, ctx.notifier)


def pauses_step(ctx: RunContext, as_of: date) -> dict[str, int]:
    """Promises kept or broken, pauses that ended, payments the customer reported found or not:
    cases resume or wait before plan."""
    with ctx.connection() as conn:
        return {**review_pauses(conn, ctx.policy, as_of), **review_claims(conn, as_of)}


def plan_step(ctx: RunContext, as_of: date) -> PlanReport:
    """Open and close cases; plan the stage due for each open case, with its cause's template."""
    with ctx.connection() as conn:
        return plan(conn, ctx.policy, as_of)


def contact_step(ctx: RunContext, as_of: date) -> ContactReport:
    """Hold today's messages to customers not to be written to; set the sending windows."""
    with ctx.connection() as conn:
        return contact(conn, ctx.policy, as_of)


def experiments_step(ctx: RunContext, as_of: date) -> int:
    """Assign today's messages of experimenting stages to a variant or the holdout."""
    with ctx.connection() as conn:
        return assign_stage_experiments(conn, ctx.policy, as_of)


def escalate_step(ctx: RunContext, as_of: date) -> EscalationReport:
    """Escalate cases past their ladder; queue disputes."""
    with ctx.connection() as conn:
        return escalate(conn, ctx.policy, as_of)


def handoff_step(ctx: RunContext, as_of: date) -> HandoffReport:
    """Send suspension signals and export agency hand-offs recorded by escalation."""
    return deliver_handoffs(ctx.engine, ctx.settings, as_of)


def render_step(ctx: RunContext, as_of: date) -> int:
    """Render every planned message not rendered yet."""
    with ctx.connection() as conn:
        return render_planned(
            conn, ctx.catalog, ctx.policy, as_of, links=ctx.links, domain=ctx.message_domain
        )


def deliver_step(ctx: RunContext, as_of: date) -> DeliveryReport:
    """Send what is rendered and due (never in a dry run)."""
    return deliver_due(ctx.engine, ctx.settings, as_of, ctx.policy.contact)


def outcomes_step(ctx: RunContext, as_of: date) -> OutcomeReport:
    """Credit payments to messages and decide outcomes."""
    with ctx.connection() as conn:
        return record_outcomes(conn, as_of, ctx.policy.attribution_window_days)


def summary_step(ctx: RunContext, as_of: date, first_new_id: int, *reports: Any) -> DaySummary:
    """Count what this run did, from the database and the steps' reports."""
    with ctx.connection() as conn:
        return summarize_day(conn, as_of, ctx.dry_run, first_new_id, *reports)
