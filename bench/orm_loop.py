"""Benchmark the set-based day against the naive baseline: one customer at a time, via the ORM.

    python bench/orm_loop.py --customers 20000 --invoices 5 --sample 2000 [--database-url URL]
        [--seed N] [--show N] [--keep] [--json]

DESIGN.md asks for assess + plan (+ render) to be at least 50x faster than "a per-customer ORM
loop doing the same decisions". This script is that loop, written the way a hand-made cron job
would be: for each customer, load its invoices, payments, disputes, broken promises and open
case through a SQLModel Session; compute every feature of `FEATURES` (flows/policy) in Python,
exactly as flows/steps/assess.py defines them in SQL; pick the segment with `condition_matches` in
policy order (first match wins); decide which ladder stage, if any, is due today, as
flows/steps/plan.py does. It writes nothing.

It first runs bench/portfolio.py's day (generate, import, assess, plan, render, floors) on a
fresh database, then times the loop over a seeded random sample of customers and extrapolates
it to the whole portfolio. A ratio means nothing if the loop decides something else, so it
then compares, customer by customer, the loop's features, segment and stage with what the SQL
path stored (`customer_features`, `customers.segment`, today's planned messages) and prints the
first mismatches side by side: a disagreement is a bug in one of the two paths.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from any directory

from sqlmodel import Session, col, select

from bench.portfolio import PIPELINE, Result
from bench.portfolio import run as run_portfolio
from collectflow.flows.cases.lifecycle import ACTIVE
from collectflow.flows.cases.lifecycle import OPEN as OPEN_STATE
from collectflow.flows.config import Settings
from collectflow.flows.ledger import public_holidays
from collectflow.flows.policy import FEATURES, Ladder, Policy, condition_matches, load_policy
from collectflow.flows.steps.outage import APOLOGY_STAGE
from collectflow.models import (
    Case,
    CaseEvent,
    Customer,
    CustomerFeatures,
    Dispute,
    Invoice,
    Message,
    Payment,
    make_engine,
)
from collectflow.models.money import from_units

BEHAVIOUR = [name for name in FEATURES if name != "risk"]
"""The features both sides derive from the ledger (risk is the risk step's score)."""
RATIO_TARGET = 50.0
SET_BASED = ("assess", "plan")  # the decisions the loop makes too; render is reported aside
ZERO = from_units(0)  # 0.0000, as the Money column returns it
OWING_STATUSES = ("open", "disputed")
SETTLED_STATUSES = ("paid", "void")  # the ledger says so: nothing is owed whatever the payments
FLOAT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Position:
    """An invoice issued by the as-of date, with what is owed on it (flows/ledger/balances.py)."""

    invoice: Invoice
    owed: Decimal
    last_paid_on: date | None


@dataclass(frozen=True)
class CaseState:
    """The ladder state plan reads from a case: where it is and whether it may move."""

    ladder: str
    status: str
    stage_index: int
    last_stage_on: date | None
    fast_track: bool


@dataclass
class Decision:
    """What the loop decided for one customer: its features, its segment, the stage due."""

    customer_id: str
    features: dict[str, Any]
    segment: str
    stage: str | None


@dataclass
class Agreement:
    """How the loop's decisions compare with the SQL path's, over the sampled customers."""

    customers: int = 0
    segments_equal: int = 0
    stages_equal: int = 0
    features_equal: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def fractions(self) -> dict[str, float]:
        total = self.customers or 1
        return {
            "segment": self.segments_equal / total,
            "stage": self.stages_equal / total,
            "features": self.features_equal / total,
        }


class OrmLoop:
    """The naive daily decisions, one customer at a time, through a SQLModel Session.

    Deliberately not a strawman: a handful of queries per customer (one per kind of row,
    never one per invoice), so the ratio measures the per-customer round trips and Python
    arithmetic the set-based path avoids, not an N+1 nobody would ship.

    The bench runs the set-based day first, on a freshly imported ledger, and the loop must
    decide from the same input, not from that day's output: the cases, disputes and case
    events the day wrote are dated `as_of`, so the loop reads only those dated before it
    (`input_until`). On a fresh ledger that leaves none; the code that reads them is there
    because the cron job it stands for would pay for those queries every day.
    """

    def __init__(self, session: Session, policy: Policy, as_of: date) -> None:
        self.session = session
        self.policy = policy
        self.as_of = as_of
        self.input_until = as_of - timedelta(days=1)
        self.window_start = as_of - timedelta(days=policy.features.window_days)
        self.failed_since = as_of - timedelta(days=policy.features.failed_payment_days)
        self.late_days = policy.risk.late_days
        self.failure_classes = policy.diagnosis.failure_classes()

    def decide(self, customer_id: str) -> Decision:
        """Load one customer's rows, then compute features, segment and the stage due today."""
        customer = self.session.get(Customer, customer_id)
        if customer is None:
            raise LookupError(f"customer {customer_id!r} is not in the database")
        invoices = self.session.exec(
            select(Invoice).where(Invoice.customer_id == customer_id)
        ).all()
        payments = self.session.exec(
            select(Payment)
            .join(Invoice, col(Invoice.invoice_id) == col(Payment.invoice_id))
            .where(Invoice.customer_id == customer_id)
        ).all()
        disputes = self.session.exec(
            select(Dispute)
            .join(Invoice, col(Invoice.invoice_id) == col(Dispute.invoice_id))
            .where(Invoice.customer_id == customer_id, Dispute.opened_on <= self.input_until)
        ).all()
        broken = self.session.exec(
            select(CaseEvent)
            .join(Case, col(Case.id) == col(CaseEvent.case_id))
            .where(
                Case.customer_id == customer_id,
                CaseEvent.kind == "promise_broken",
                CaseEvent.on <= self.input_until,
            )
        ).all()
        case = self.session.exec(
            select(Case).where(
                Case.customer_id == customer_id,
                col(Case.closed_on).is_(None),
                Case.opened_on <= self.input_until,
            )
        ).first()

        positions = self.positions(invoices, payments)
        features = self.features(positions, payments, disputes, broken)
        segment = self.segment(features)
        state = (
            CaseState(
                case.ladder, case.status, case.stage_index, case.last_stage_on, case.fast_track
            )
            if case is not None
            else None
        )
        # balances (unlike features) treat every unresolved dispute as open, whatever its date
        under_dispute = {d.invoice_id for d in disputes if d.resolved_on is None}
        stage = self.stage_due(positions, under_dispute, segment, state, customer.country)
        return Decision(customer_id, features, segment, stage)

    def positions(self, invoices: Sequence[Invoice], payments: Sequence[Payment]) -> list[Position]:
        """Owed = amount - succeeded + refunded, over attempts up to today (business date),
        failed ones aside; `paid` and `void` invoices owe nothing (flows/ledger/balances.py)."""
        by_invoice: dict[str, list[Payment]] = {}
        for payment in payments:
            if payment.status != "failed" and payment.attempted_on <= self.as_of:
                by_invoice.setdefault(payment.invoice_id, []).append(payment)
        positions = []
        for invoice in invoices:
            if invoice.issued_on > self.as_of:
                continue
            attempts = by_invoice.get(invoice.invoice_id, [])
            paid = sum((p.amount for p in attempts if p.status == "succeeded"), ZERO)
            refunded = sum((p.amount for p in attempts if p.status == "refunded"), ZERO)
            paid_on = [p.attempted_on for p in attempts if p.status == "succeeded"]
            owed = ZERO if invoice.status in SETTLED_STATUSES else invoice.amount - paid + refunded
            positions.append(Position(invoice, owed, max(paid_on, default=None)))
        return positions

    def features(
        self,
        positions: list[Position],
        payments: Sequence[Payment],
        disputes: Sequence[Dispute],
        broken: Sequence[CaseEvent],
    ) -> dict[str, Any]:
        """Every feature of FEATURES, as compute_features defines it in SQL."""
        as_of, window_start = self.as_of, self.window_start
        open_disputes = {
            d.invoice_id
            for d in disputes
            if d.opened_on <= as_of and (d.resolved_on is None or d.resolved_on > as_of)
        }  # an operator's (or diagnosis's) dispute open on the as-of date
        live = [p for p in positions if p.invoice.status != "void"]
        in_window = [p for p in live if p.invoice.issued_on > window_start]
        paid = [p for p in in_window if p.invoice.status != "disputed" and p.owed <= ZERO]
        late = sorted(
            max((p.last_paid_on - p.invoice.due_on).days, 0)
            for p in paid
            if p.last_paid_on is not None
        )  # "timed": paid in the window with a known payment date
        owing = [p for p in live if p.owed > ZERO and p.invoice.status in OWING_STATUSES]
        overdue = [p for p in owing if p.invoice.due_on < as_of]
        failed = [
            p
            for p in payments
            if p.status == "failed" and self.failed_since < p.attempted_on <= as_of
        ]
        classes = [self.failure_class(p.failure_code) for p in failed]
        values: dict[str, Any] = {
            "invoices_issued": len(in_window),
            "invoices_paid": len(paid),
            "on_time_ratio": sum(d <= 0 for d in late) / len(late) if late else None,
            "avg_days_late": sum(late) / len(late) if late else None,
            "open_balance": sum((p.owed for p in owing), ZERO),
            "overdue_balance": sum((p.owed for p in overdue), ZERO),
            "open_invoices": len(owing),
            "oldest_overdue_days": max(
                ((as_of - p.invoice.due_on).days for p in overdue), default=0
            ),
            "failed_payments_30d": len(failed),
            "disputes": sum(
                p.invoice.status == "disputed" or p.invoice.invoice_id in open_disputes
                for p in owing
            ),
            "tenure_days": max(((as_of - p.invoice.issued_on).days for p in live), default=0),
            # nearest rank: the ceil(0.9 n)-th smallest, in integers as the SQL does it
            "p90_days_late": float(late[(9 * len(late) + 9) // 10 - 1]) if late else None,
            "failed_technical_30d": classes.count("technical"),
            "failed_customer_30d": classes.count("customer"),
            "broken_promises": sum(window_start < e.on <= as_of for e in broken),
            "failed_order_30d": classes.count("order"),
            "very_late_ratio": sum(d > self.late_days for d in late) / len(late) if late else None,
            "risk": None,  # a model's score (the risk step), not a behaviour: compared apart
        }
        if values.keys() != FEATURES.keys():  # a new feature must be added here, not skipped
            raise RuntimeError(f"features differ from FEATURES: {values.keys() ^ FEATURES.keys()}")
        return values

    def failure_class(self, code: str | None) -> str:
        """The class failure_class_sql gives: SQL trims spaces only, then maps `-` and ` `."""
        if code is None:
            return self.policy.diagnosis.unknown_failure_class
        normalised = code.strip(" ").replace(" ", "_").replace("-", "_").lower()
        return self.failure_classes.get(normalised, self.policy.diagnosis.unknown_failure_class)

    def segment(self, features: dict[str, Any]) -> str:
        """The first segment whose rule matches; the last one is a catch-all."""
        for segment in self.policy.segments:
            if condition_matches(segment.when, features):
                return segment.name
        raise AssertionError("the policy's last segment is a catch-all")  # validated at load

    def stage_due(
        self,
        positions: list[Position],
        under_dispute: set[str],
        segment: str,
        case: CaseState | None,
        country: str | None,
    ) -> str | None:
        """The ladder stage plan would plan today, or None: open a case if a remindable
        invoice reached the ladder, skip pre-due stages once overdue, then move at most one
        stage, when its offset from the oldest remindable due date is reached and the
        previous stage is `min_gap_days` old."""
        owing = [p for p in positions if p.owed > ZERO and p.invoice.status in OWING_STATUSES]
        remindable = [
            p
            for p in owing
            if p.invoice.status != "disputed" and p.invoice.invoice_id not in under_dispute
        ]
        if case is None:
            name = self.policy.segment(segment).ladder
            first_offset = self.policy.ladders[name].stages[0].offset_days
            if not any((self.as_of - p.invoice.due_on).days >= first_offset for p in remindable):
                return None
            case = CaseState(name, OPEN_STATE, -1, None, False)
        else:
            first_offset = self.policy.ladders[case.ladder].stages[0].offset_days
            if not any((self.as_of - p.invoice.due_on).days >= first_offset for p in owing):
                return None  # resolved today
        if case.status not in ACTIVE or not remindable:
            return None
        ladder = self.policy.ladders[case.ladder]
        stage_index = case.stage_index
        pre_due = [index for index, stage in enumerate(ladder.stages) if stage.offset_days < 0]
        overdue = any(p.invoice.due_on < self.as_of for p in remindable)
        if pre_due and stage_index < pre_due[-1] and overdue:
            stage_index = pre_due[-1]  # a "due soon" note after the due date would be wrong
        if stage_index + 1 >= len(ladder.stages):
            return None
        stage = ladder.stages[stage_index + 1]
        anchor = min(p.invoice.due_on for p in remindable)
        elapsed = self.days_elapsed(ladder, anchor, country)
        gap_ok = (
            case.fast_track
            or case.last_stage_on is None
            or (self.as_of - case.last_stage_on).days >= ladder.min_gap_days
        )
        if (case.fast_track or elapsed >= stage.offset_days) and gap_ok:
            return stage.name
        return None

    def days_elapsed(self, ladder: Ladder, since: date, country: str | None) -> int:
        """Days from `since` to today: business days in the customer's country (or the
        policy's default) when the ladder counts them, else calendar days."""
        if not ladder.business_days:
            return (self.as_of - since).days
        observed = (country or "").strip(" ").upper() or self.policy.contact.holidays_country
        low, high = sorted((since, self.as_of))
        days_off = _holidays(observed, low.year, high.year)
        count = sum(
            1
            for offset in range(1, (high - low).days + 1)
            if (day := low + timedelta(days=offset)).weekday() < 5 and day not in days_off
        )
        return count if self.as_of >= since else -count


@cache
def _holidays(country: str | None, first_year: int, last_year: int) -> frozenset[date]:
    return frozenset(public_holidays(country, range(first_year, last_year + 1)))


def run_loop(url: str, policy: Policy, as_of: date, sample: list[str]) -> list[Decision]:
    """Decide for each sampled customer in turn, in one read-only session (rolled back)."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            loop = OrmLoop(session, policy, as_of)
            decisions = [loop.decide(customer_id) for customer_id in sample]
            session.rollback()
    finally:
        engine.dispose()
    return decisions


def all_customer_ids(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(Customer.customer_id).order_by(Customer.customer_id)))
    finally:
        engine.dispose()


def compare(url: str, as_of: date, decisions: list[Decision], show: int) -> Agreement:
    """Check each decision against what assess and plan stored; keep the first `show`
    disagreements with every feature side by side."""
    agreement = Agreement()
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            for decision in decisions:
                customer_id = decision.customer_id
                customer = session.get(Customer, customer_id)
                stored = session.get(CustomerFeatures, customer_id)
                planned = session.exec(
                    select(Message.stage).where(
                        Message.customer_id == customer_id,
                        Message.planned_on == as_of,
                        Message.kind == "reminder",
                        Message.stage != APOLOGY_STAGE,
                    )
                ).all()
                sql_segment = customer.segment if customer else None
                sql_stage = planned[0] if len(planned) == 1 else (planned or None)
                sql_features = {name: getattr(stored, name) for name in FEATURES} if stored else {}
                differing = [
                    name
                    for name in BEHAVIOUR
                    if not _same(decision.features[name], sql_features.get(name))
                ]
                agreement.customers += 1
                agreement.segments_equal += decision.segment == sql_segment
                agreement.stages_equal += decision.stage == sql_stage
                agreement.features_equal += not differing
                wrong = decision.segment != sql_segment or decision.stage != sql_stage
                if (wrong or differing) and len(agreement.mismatches) < show:
                    agreement.mismatches.append(
                        {
                            "customer_id": customer_id,
                            "segment": {"orm": decision.segment, "sql": sql_segment},
                            "stage": {"orm": decision.stage, "sql": sql_stage},
                            "differing": differing,
                            "features": {
                                name: {
                                    "orm": _plain(decision.features[name]),
                                    "sql": _plain(sql_features.get(name)),
                                }
                                for name in BEHAVIOUR
                            },
                        }
                    )
    finally:
        engine.dispose()
    return agreement


def _same(orm: Any, sql: Any) -> bool:
    """Equal as the segment rules see them: money exactly, ratios up to float rounding."""
    if orm is None or sql is None:
        return orm is None and sql is None
    if isinstance(orm, float) or isinstance(sql, float):
        return math.isclose(
            float(orm), float(sql), rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE
        )
    return bool(orm == sql)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The portfolio day (bench/portfolio.py), then the timed loop, then the agreement."""
    url = args.database_url or f"sqlite:///{workdir / 'collectflow.db'}"  # as portfolio.run
    result: Result = run_portfolio(args.customers, args.invoices, url, workdir)
    as_of = date.fromisoformat(result.as_of)
    policy = load_policy(Settings(database_url=url).policy)
    customers = all_customer_ids(url)
    sample = random.Random(args.seed).sample(customers, min(args.sample, len(customers)))

    start = time.perf_counter()
    decisions = run_loop(url, policy, as_of, sample)
    loop_seconds = time.perf_counter() - start
    agreement = compare(url, as_of, decisions, args.show)

    set_based = result.seconds(SET_BASED)
    with_render = result.seconds(PIPELINE)
    per_customer = loop_seconds / len(sample)
    extrapolated = per_customer * len(customers)
    return {
        "as_of": result.as_of,
        "database": result.database,
        "rows": result.rows,
        "phases": [asdict(phase) for phase in result.phases],
        "customers": len(customers),
        "sample": len(sample),
        "seed": args.seed,
        "set_based_seconds": round(set_based, 3),
        "set_based_with_render_seconds": round(with_render, 3),
        "orm_sample_seconds": round(loop_seconds, 3),
        "orm_per_customer_ms": round(per_customer * 1000, 3),
        "orm_extrapolated_seconds": round(extrapolated, 3),
        "ratio": round(extrapolated / set_based, 2),
        "ratio_with_render": round(extrapolated / with_render, 2),
        "ratio_target": RATIO_TARGET,
        "ratio_met": extrapolated / set_based >= RATIO_TARGET,
        "agreement": {name: round(value, 6) for name, value in agreement.fractions().items()},
        "agreeing": {
            "segment": agreement.segments_equal,
            "stage": agreement.stages_equal,
            "features": agreement.features_equal,
        },
        "sample_segments": dict(Counter(d.segment for d in decisions).most_common()),
        "sample_stages_due": dict(Counter(d.stage or "none" for d in decisions).most_common()),
        "mismatches": agreement.mismatches,
    }


def print_report(report: dict[str, Any]) -> None:
    rows = ", ".join(f"{count:,} {name[:-4]}" for name, count in report["rows"].items())
    print(f"Portfolio: {rows}; as of {report['as_of']} on {report['database']}")
    print(f"\n{'phase':<12} {'seconds':>10} {'peak RSS MiB':>14}")
    for phase in report["phases"]:
        print(f"{phase['name']:<12} {phase['seconds']:>10.3f} {phase['peak_rss_mib']:>14.1f}")
    customers, sample = report["customers"], report["sample"]
    verdict = "met" if report["ratio_met"] else "NOT met"
    print(
        f"\nset-based assess+plan      {report['set_based_seconds']:>10.3f} s"
        f"   ({customers:,} customers)"
    )
    print(
        f"ORM loop, sample           {report['orm_sample_seconds']:>10.3f} s"
        f"   ({sample:,} customers, seed {report['seed']}, "
        f"{report['orm_per_customer_ms']:.2f} ms each)"
    )
    print(
        f"ORM loop, extrapolated     {report['orm_extrapolated_seconds']:>10.3f} s"
        f"   ({customers:,} customers)"
    )
    print(
        f"ratio {report['ratio']:.1f}x (target >= {RATIO_TARGET:g}x: {verdict}); "
        f"against assess+plan+render ({report['set_based_with_render_seconds']:.3f} s): "
        f"{report['ratio_with_render']:.1f}x"
    )
    agreeing, fractions = report["agreeing"], report["agreement"]
    print(f"\nagreement with the SQL path over the {sample:,} sampled customers:")
    for name in ("segment", "stage", "features"):
        label = {"stage": "stage due today", "features": "all features"}.get(name, name)
        print(f"  {label:<16} {fractions[name]:>8.2%}  ({agreeing[name]:,}/{sample:,})")
    for name in ("segments", "stages_due"):
        spread = ", ".join(f"{key} {count:,}" for key, count in report[f"sample_{name}"].items())
        print(f"  sample {name.replace('_', ' ')} (orm): {spread}")
    for mismatch in report["mismatches"]:
        segment, stage = mismatch["segment"], mismatch["stage"]
        print(
            f"\nmismatch {mismatch['customer_id']}: segment orm={segment['orm']} "
            f"sql={segment['sql']}; stage orm={stage['orm']} sql={stage['sql']}"
        )
        print(f"  {'feature':<22} {'orm':>14} {'sql':>14}")
        for name, values in mismatch["features"].items():
            mark = "  <-" if name in mismatch["differing"] else ""
            print(f"  {name:<22} {values['orm']!s:>14} {values['sql']!s:>14}{mark}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--invoices", type=int, default=5, help="invoices per customer")
    parser.add_argument("--sample", type=int, default=2_000, help="customers the loop decides")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sample")
    parser.add_argument("--show", type=int, default=5, help="mismatches printed in full")
    parser.add_argument(
        "--database-url",
        help="database to use (default: a SQLite file in the temporary directory); "
        "its Collectflow tables are DROPPED and recreated, so point it at a scratch database",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.sample < 1:
        parser.error("--sample must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="collectflow-bench-"))
    try:
        report = measure(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
