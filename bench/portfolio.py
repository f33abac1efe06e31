"""Benchmark one business day on a generated portfolio, against the floor measured in the same run.

    python bench/portfolio.py --customers 200000 --invoices 5 [--database-url URL] [--keep] [--json]

Generates the demo ledger (flows/ledger/demo.py) into a temporary directory, imports it, then
times assess, risk, segment, diagnose, plan and render for today, each in its own transaction,
and the peak memory of the process after each phase. The risk step (fit on the ledger's
history, score every customer) is reported on its own, against its target of 20 s. The floor
is what the same data costs without Collectflow's decisions: (a) one bare SQL aggregate of
what each customer owes, over the same invoices and payments, and (b) bare Jinja2 renders of
as many simple messages as the run rendered. DESIGN.md asks for (assess + plan + render)
within 3x of (a + b), and peak memory under 1 GiB.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from any directory

RATIO_TARGET = 3.0
MEMORY_TARGET_MIB = 1024.0
RISK_TARGET_SECONDS = 20.0
PIPELINE = ("assess", "segment", "diagnose", "plan", "render")
"""What DESIGN.md's ratio counts: assess (features, then segments) and the steps after it.
The risk step between features and segments is its own phase, with its own target."""
FLOOR = ("floor_sql", "floor_jinja")

FLOOR_SQL = """
SELECT i.customer_id,
       COUNT(*) AS owing_invoices,
       SUM(i.amount - COALESCE(p.settled, 0)) AS owed,
       SUM(CASE WHEN i.due_on < :as_of THEN i.amount - COALESCE(p.settled, 0) ELSE 0 END)
           AS overdue
FROM invoices AS i
LEFT JOIN (
    SELECT invoice_id,
           SUM(CASE WHEN status = 'succeeded' THEN amount ELSE -amount END) AS settled
    FROM payments
    WHERE status <> 'failed' AND attempted_on <= :as_of
    GROUP BY invoice_id
) AS p ON p.invoice_id = i.invoice_id
WHERE i.issued_on <= :as_of
  AND i.status IN ('open', 'disputed')
  AND i.amount > COALESCE(p.settled, 0)
GROUP BY i.customer_id
"""


@dataclass
class Phase:
    """One timed phase: wall time, and the process's peak resident memory once it ended."""

    name: str
    seconds: float
    peak_rss_mib: float


@dataclass
class Result:
    """Everything the benchmark measured, as printed (and as the --json document)."""

    as_of: str
    database: str
    rows: dict[str, int]
    phases: list[Phase] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.phases.append(Phase(name, time.perf_counter() - start, peak_rss_mib()))

    def seconds(self, names: tuple[str, ...]) -> float:
        return sum(phase.seconds for phase in self.phases if phase.name in names)

    def summary(self) -> dict[str, Any]:
        pipeline, floor = self.seconds(PIPELINE), self.seconds(FLOOR)
        ratio = pipeline / floor if floor else float("inf")
        peak = max(phase.peak_rss_mib for phase in self.phases)
        return {
            "pipeline_seconds": round(pipeline, 3),
            "floor_seconds": round(floor, 3),
            "ratio": round(ratio, 2),
            "ratio_target": RATIO_TARGET,
            "ratio_met": ratio <= RATIO_TARGET,
            "peak_rss_mib": round(peak, 1),
            "peak_rss_target_mib": MEMORY_TARGET_MIB,
            "peak_rss_met": peak < MEMORY_TARGET_MIB,
            "risk_seconds": round(self.seconds(("risk",)), 3),
            "risk_target_seconds": RISK_TARGET_SECONDS,
            "risk_met": self.seconds(("risk",)) < RISK_TARGET_SECONDS,
        }


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(customers: int, invoices: int, database_url: str | None, workdir: Path) -> Result:
    """Generate, import, run one day, measure the floor; the database's tables are recreated."""
    from collectflow.flows.cases.pauses import review_pauses
    from collectflow.flows.config import Settings
    from collectflow.flows.feedback.message_links import message_links
    from collectflow.flows.ledger.csv_import import import_ledger
    from collectflow.flows.ledger.demo import write_demo_ledger
    from collectflow.flows.measure.experiments import assign_stage_experiments
    from collectflow.flows.policy.document import load_policy
    from collectflow.flows.steps.assess import measure_behaviour, segment_customers
    from collectflow.flows.steps.contact import contact
    from collectflow.flows.steps.diagnose import diagnose
    from collectflow.flows.steps.plan import plan
    from collectflow.flows.steps.prepare import prepare
    from collectflow.flows.steps.render import TemplateCatalog, render_planned
    from collectflow.flows.steps.risk import score_risk
    from collectflow.models import drop_db, init_db, make_engine

    as_of = date.today()
    url = database_url or f"sqlite:///{workdir / 'collectflow.db'}"
    settings = Settings(
        database_url=url,
        outbox=workdir / "outbox",
        link_secret="bench-link-secret-0123456789",  # answer links are signed as in a run
        public_url="https://answers.example.com",
    )
    policy = load_policy(settings.policy)
    links = message_links(settings)
    engine = make_engine(url)
    drop_db(engine)
    init_db(engine)
    result = Result(as_of.isoformat(), engine.dialect.name, rows={})
    try:
        with result.phase("generate"):
            result.rows = write_demo_ledger(workdir / "ledger", as_of, customers, invoices)
        with result.phase("import"):
            import_ledger(engine, workdir / "ledger", settings)
        with result.phase("assess"), engine.begin() as conn:
            measure_behaviour(conn, policy, as_of)
        with result.phase("risk"), engine.begin() as conn:
            result.counts["risk"] = asdict(score_risk(conn, policy, as_of))
        with result.phase("segment"), engine.begin() as conn:
            result.counts["segments"] = segment_customers(conn, policy, as_of).segments
        with result.phase("diagnose"), engine.begin() as conn:
            result.counts["diagnose"] = asdict(diagnose(conn, policy, as_of))
        with result.phase("plan"), engine.begin() as conn:  # with what run_day runs around it
            prepare(conn, policy, as_of)
            review_pauses(conn, policy, as_of)
            result.counts["plan"] = asdict(plan(conn, policy, as_of))
            contact(conn, policy, as_of)
            assign_stage_experiments(conn, policy, as_of)
        with result.phase("render"):
            catalog = TemplateCatalog(settings.templates, policy.templates() | {"escalation"})
            with engine.begin() as conn:
                rendered = render_planned(conn, catalog, policy, as_of, links=links)
        result.counts["rendered"] = rendered
        with result.phase("floor_sql"), engine.connect() as conn:
            result.counts["floor_sql_customers"] = floor_sql(conn, as_of)
        with engine.connect() as conn:
            mix = message_mix(conn)
        with result.phase("floor_jinja"):
            floor_jinja(settings.templates, mix)
    finally:
        engine.dispose()
    return result


def floor_sql(conn: Any, as_of: date) -> int:
    """What each customer owes and has overdue, in one aggregate; returns the customers owing."""
    from sqlalchemy import Date, bindparam, text

    statement = text(FLOOR_SQL).bindparams(bindparam("as_of", type_=Date))
    return len(conn.execute(statement, {"as_of": as_of}).all())


def message_mix(conn: Any) -> dict[tuple[str, str], int]:
    """How many rendered messages use each (template, locale): what floor (b) renders."""
    from sqlalchemy import func, select

    from collectflow.models import Message

    messages = Message.__table__
    query = (
        select(messages.c.template, messages.c.locale, func.count())
        .where(messages.c.subject.is_not(None))
        .group_by(messages.c.template, messages.c.locale)
    )
    return {(template, locale): count for template, locale, count in conn.execute(query)}


def floor_jinja(directory: Path, mix: dict[tuple[str, str], int]) -> None:
    """Render the same templates, as many times each, as the run did: bare Jinja2.

    Same files, same locale folders, same three parts; but a plain `jinja2.Environment` (no
    sandbox, no StrictUndefined) and ready-made contexts (`sample_contexts`, built before the
    clock starts), so neither the database, nor the sandbox, nor Babel formatting is counted.
    DESIGN.md's floor is "bare Jinja2 renders of the same messages"; rendering toy templates
    instead would make the floor a measure of template size, not of Collectflow's overhead.
    """
    import jinja2

    from collectflow.flows.steps.render import PARTS, TemplateCatalog, sample_contexts

    catalog = TemplateCatalog(directory, {template for template, _ in mix})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=lambda name: name is not None and name.endswith(".html.j2"),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    work = []
    for (template, locale), count in mix.items():
        folder = catalog.locale_for(locale, template)
        parts = [env.get_template(f"{folder}/{template}.{part}.j2") for part in PARTS]
        work.append((parts, sample_contexts(folder), count))
    for parts, contexts, count in work:
        for index in range(count):
            context = contexts[index % len(contexts)]
            for part in parts:
                part.render(context)


def print_table(result: Result) -> None:
    rows = ", ".join(f"{count:,} {name[:-4]}" for name, count in result.rows.items())
    print(f"Portfolio: {rows}; as of {result.as_of} on {result.database}")
    print(f"Messages rendered: {result.counts['rendered']:,}")
    print(f"\n{'phase':<12} {'seconds':>10} {'peak RSS MiB':>14}")
    for phase in result.phases:
        print(f"{phase.name:<12} {phase.seconds:>10.3f} {phase.peak_rss_mib:>14.1f}")
    summary = result.summary()
    verdict = {True: "met", False: "NOT met"}
    print(
        f"\nassess+plan+render {summary['pipeline_seconds']:.3f} s / "
        f"floor (sql+jinja) {summary['floor_seconds']:.3f} s = {summary['ratio']:.2f}x "
        f"(target <= {RATIO_TARGET:g}x: {verdict[summary['ratio_met']]})"
    )
    print(
        f"risk (fit on {result.counts['risk']['examples']:,} labelled invoices, "
        f"{result.counts['risk']['scored']:,} customers scored) {summary['risk_seconds']:.3f} s "
        f"(target < {RISK_TARGET_SECONDS:g} s: {verdict[summary['risk_met']]})"
    )
    print(
        f"peak RSS {summary['peak_rss_mib']:.1f} MiB "
        f"(target < {MEMORY_TARGET_MIB:g} MiB: {verdict[summary['peak_rss_met']]})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--invoices", type=int, default=5, help="invoices per customer")
    parser.add_argument(
        "--database-url",
        help="database to use (default: a SQLite file in the temporary directory); "
        "its Collectflow tables are DROPPED and recreated, so point it at a scratch database",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="collectflow-bench-"))
    try:
        result = run(args.customers, args.invoices, args.database_url, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(result) | result.summary(), indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
