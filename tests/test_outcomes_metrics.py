"""Outcomes and effectiveness metrics on a hand-built ledger with known answers.

Ten customers each owe one invoice of 100.00 EUR due on DUE and get the `gentle` reminder on
SENT (09:00); the attribution window and the cure window are 14 days. What each one then did:

    A  pays 100 two days later                      -> paid, 2 days
    B  pays 40 six days later                       -> partial (40.00), 6 days
    C  promises to pay the next day                 -> promised
    D  opens a dispute three days later             -> disputed
    E  the message bounced                          -> bounced
    F  nothing                                      -> no_response
    G  opts out the next day                        -> opted_out
    H  pays 100 sixteen days later (window is 14)   -> no_response, not cured
    K  had a pre-due reminder too; pays the next day -> paid (last touch: gentle), 1 day
    L  disputes the next day, then pays in full     -> paid: money comes first
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from html import unescape
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from sqlalchemy import Connection, Engine, insert, select, update
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.cli.options import out
from collectflow.flows.config import Settings
from collectflow.flows.evaluate import evaluate
from collectflow.flows.measure import (
    average_days_delinquent,
    breakdown,
    cei,
    countback_dso,
    portfolio,
    round_tenth,
    simple_dso,
)
from collectflow.flows.steps import record_outcomes
from collectflow.models import ContactBlock, Dispute, Message, Outcome, PaymentAttribution, Promise
from tests.ledger import Ledger
from tests.outbox import open_case, sent_message

DUE = date(2026, 3, 1)
SENT = date(2026, 3, 4)
AFTER = date(2026, 4, 1)  # every window closed
WINDOW = 14


def on(days: int) -> date:
    return SENT + timedelta(days=days)


@pytest.fixture
def ten_customers(engine: Engine, settings: Settings, tmp_path: Path) -> dict[str, int]:
    """The story of the module docstring; returns each customer's gentle message id."""
    ledger = Ledger()
    for customer in "ABCDEFGHKL":
        ledger.customer(customer)
        ledger.invoice(f"INV-{customer}", customer, DUE, amount="100.00")
    ledger.payment("P-A", "INV-A", on(2))
    ledger.payment("P-B", "INV-B", on(6), amount="40.00")
    ledger.payment("P-H", "INV-H", on(16))
    ledger.payment("P-K", "INV-K", on(1))
    ledger.payment("P-L", "INV-L", on(2))
    ledger.load(engine, tmp_path / "ledger", settings)
    messages = {}
    with engine.begin() as conn:
        for customer in "ABCDEFGHKL":
            case_id = open_case(conn, customer, DUE - timedelta(days=3))
            if customer == "K":
                sent_message(conn, case_id, "K", "pre_due", DUE - timedelta(days=3), ["INV-K"])
            status = "bounced" if customer == "E" else "sent"
            messages[customer] = sent_message(
                conn, case_id, customer, "gentle", SENT, [f"INV-{customer}"], status=status
            )
        respond(conn, messages)
    return messages


def respond(conn: Connection, messages: dict[str, int]) -> None:
    """C promises, D and L dispute, G opts out."""
    messages_table = Message.__table__
    cases = dict(
        conn.execute(
            select(messages_table.c.customer_id, messages_table.c.case_id).where(
                messages_table.c.id.in_(messages.values())
            )
        ).all()
    )
    conn.execute(
        insert(Promise.__table__).values(
            case_id=cases["C"],
            amount=Decimal("100.00"),
            currency="EUR",
            promised_on=on(10),
            grace_until=on(13),
            made_on=on(1),
            actor="operator",
        )
    )
    for customer, days in (("D", 3), ("L", 1)):
        conn.execute(
            insert(Dispute.__table__).values(
                case_id=cases[customer],
                invoice_id=f"INV-{customer}",
                reason="goods damaged",
                opened_on=on(days),
            )
        )
    conn.execute(
        insert(ContactBlock.__table__).values(
            scope="customer",
            value="G",
            reason="opted_out",
            at=datetime.combine(on(1), time(15), tzinfo=UTC),
        )
    )


def outcomes(engine: Engine) -> dict[int, tuple[str, int | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Outcome.__table__.c.message_id,
                Outcome.__table__.c.outcome,
                Outcome.__table__.c.days_to_pay,
            )
        ).all()
    return {message_id: (outcome, days) for message_id, outcome, days in rows}


def test_every_message_ends_with_an_outcome_in_the_documented_order(
    engine: Engine, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)

    by_customer = {c: outcomes(engine)[m] for c, m in ten_customers.items()}
    assert by_customer == {
        "A": ("paid", 2),
        "B": ("partial", 6),
        "C": ("promised", None),
        "D": ("disputed", None),
        "E": ("bounced", None),
        "F": ("no_response", None),
        "G": ("opted_out", None),
        "H": ("no_response", None),
        "K": ("paid", 1),
        "L": ("paid", 2),
    }


def test_while_the_window_is_open_only_final_outcomes_are_written(
    engine: Engine, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, on(7), WINDOW)

    decided = {c for c, m in ten_customers.items() if m in outcomes(engine)}
    assert decided == {"A", "E", "K", "L"}  # paid in full, or bounced


def test_a_payment_imported_late_is_credited_on_the_next_run(
    engine: Engine, settings: Settings, tmp_path: Path, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)
    assert outcomes(engine)[ten_customers["F"]] == ("no_response", None)

    backfill = Ledger()
    backfill.payment("P-F", "INV-F", on(5))
    backfill.load(engine, tmp_path / "backfill", settings)
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)

    assert outcomes(engine)[ten_customers["F"]] == ("paid", 5)


def test_a_backfilled_payment_goes_to_the_message_before_it_not_the_one_it_prevented(
    engine: Engine, settings: Settings, tmp_path: Path, ten_customers: dict[str, int]
) -> None:
    """F paid on day 3, but the payment reached the ledger only after the `firm` reminder of
    day 10 had gone out: the money is the gentle reminder's, the firm one got no response."""
    with engine.begin() as conn:
        case_id = conn.execute(
            select(Message.__table__.c.case_id).where(Message.__table__.c.id == ten_customers["F"])
        ).scalar_one()
        firm = sent_message(conn, case_id, "F", "firm", on(10), ["INV-F"])
    backfill = Ledger()
    backfill.payment("P-F", "INV-F", on(3))
    backfill.load(engine, tmp_path / "backfill", settings)

    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)
        attribution = conn.execute(select(PaymentAttribution.__table__)).mappings().all()

    assert outcomes(engine)[ten_customers["F"]] == ("paid", 3)
    assert outcomes(engine)[firm] == ("no_response", None)
    (credit,) = [row for row in attribution if row["payment_id"] == "P-F"]
    assert (credit["message_id"], credit["first_message_id"]) == (ten_customers["F"],) * 2


def test_on_the_same_day_the_message_sent_last_before_the_payment_gets_it(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A campaign (planned later, so a higher id) went out at 08:00 and the reminder at 11:00;
    the payment came at 15:00: last touch is the reminder, first touch the campaign."""
    ledger = Ledger()
    ledger.customer("S")
    ledger.invoice("INV-S", "S", DUE)
    ledger.payment("P-S", "INV-S", SENT, hour=15)
    ledger.load(engine, tmp_path / "ledger", settings)
    with engine.begin() as conn:
        case_id = open_case(conn, "S", DUE)
        at = {hour: datetime.combine(SENT, time(hour), tzinfo=UTC) for hour in (8, 11)}
        reminder = sent_message(conn, case_id, "S", "gentle", SENT, ["INV-S"], sent_at=at[11])
        early = sent_message(
            conn, case_id, "S", "spring", SENT, ["INV-S"], kind="campaign", template="firm",
            key="campaign:spring:S", sent_at=at[8],
        )  # fmt: skip
        record_outcomes(conn, AFTER, WINDOW)
        (credit,) = conn.execute(select(PaymentAttribution.__table__)).mappings().all()

    assert (credit["message_id"], credit["first_message_id"]) == (reminder, early)
    assert outcomes(engine)[reminder] == ("paid", 0)


def test_stage_metrics_to_the_cent_and_the_day(
    engine: Engine, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)
        pre_due, gentle = breakdown(conn, ["stage"], AFTER, cure_days=14)

    assert gentle.key == {"stage": "gentle"}
    assert gentle.messages == 10
    assert (gentle.cured, gentle.decided, gentle.cure_rate) == (3, 10, 0.3)  # A, K, L
    assert gentle.outcomes == {
        "paid": 3, "partial": 1, "promised": 1, "disputed": 1, "bounced": 1, "opted_out": 1,
        "no_response": 2,
    }  # fmt: skip
    assert (gentle.bounce_rate, gentle.opt_out_rate) == (0.1, 0.1)
    assert gentle.median_days_to_pay == 2.0  # 1, 2, 2, 6
    assert gentle.p90_days_to_pay == 6
    assert gentle.asked == {"EUR": Decimal("1000.00")}
    assert gentle.recovered == {"EUR": Decimal("340.00")}
    assert gentle.amount_cure_rate("EUR") == 0.34  # 100 + 40 + 100 + 100 of 1000
    # K's payment is the gentle reminder's by last touch, the pre-due one's by first touch
    assert pre_due.key == {"stage": "pre_due"}
    assert pre_due.outcomes == {"no_response": 1}
    assert pre_due.recovered == {"EUR": Decimal("0.00")}
    assert pre_due.recovered_first_touch == {"EUR": Decimal("100.00")}
    # cure is about the money, not the credit: K paid 8 days after the pre-due reminder
    assert pre_due.cure_rate == 1.0


def test_metrics_per_template_variant_and_cause_to_the_cent(
    engine: Engine, ten_customers: dict[str, int]
) -> None:
    """A, B and G got the `gentle_named` variant; A's and E's invoices had a failed payment."""
    messages = Message.__table__
    with engine.begin() as conn:
        for customer in "ABG":
            conn.execute(
                update(messages)
                .where(messages.c.id == ten_customers[customer])
                .values(template="gentle_named", variant="gentle_named", experiment="named")
            )
        conn.execute(
            update(messages)
            .where(messages.c.id.in_([ten_customers["A"], ten_customers["E"]]))
            .values(cause="payment_failed_customer")
        )
        record_outcomes(conn, AFTER, WINDOW)
        by = {
            name: {row.key[name]: row for row in breakdown(conn, [name], AFTER, cure_days=14)}
            for name in ("template", "variant", "cause")
        }

    named, gentle, pre_due = (by["template"][t] for t in ("gentle_named", "gentle", "pre_due"))
    assert (named.messages, named.cured, named.cure_rate) == (3, 1, 0.3333)  # A of A, B, G
    assert (named.opt_out_rate, named.bounce_rate) == (0.3333, 0.0)  # G
    assert (named.median_days_to_pay, named.p90_days_to_pay) == (4.0, 6)  # 2 and 6
    assert named.recovered == {"EUR": Decimal("140.00")}
    assert (gentle.messages, gentle.cured, gentle.cure_rate) == (7, 2, 0.2857)  # K, L
    assert (gentle.opt_out_rate, gentle.bounce_rate) == (0.0, 0.1429)  # E
    assert (gentle.median_days_to_pay, gentle.p90_days_to_pay) == (1.5, 2)
    assert gentle.recovered == {"EUR": Decimal("200.00")}
    assert (pre_due.messages, pre_due.recovered_first_touch) == (1, {"EUR": Decimal("100.00")})
    assert {key: row.messages for key, row in by["variant"].items()} == {
        "-": 8, "gentle_named": 3,
    }  # fmt: skip
    failed = by["cause"]["payment_failed_customer"]
    assert (failed.messages, failed.cure_rate, failed.bounce_rate) == (2, 0.5, 0.5)  # A; E
    assert failed.recovered == {"EUR": Decimal("100.00")}
    assert by["cause"]["-"].messages == 9


def test_metrics_by_month_and_segment_split_the_same_messages(
    engine: Engine, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)
        rows = breakdown(conn, ["month", "segment"], AFTER, cure_days=14)

    assert [(r.key, r.messages, r.cured) for r in rows] == [
        ({"month": "2026-02", "segment": "on_time"}, 1, 1),
        ({"month": "2026-03", "segment": "on_time"}, 10, 3),
    ]


def test_a_message_whose_cure_window_is_open_is_not_counted_yet(
    engine: Engine, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, on(7), WINDOW)
        _pre_due, gentle = breakdown(conn, ["stage"], on(7), cure_days=14)

    assert (gentle.messages, gentle.decided, gentle.cure_rate) == (10, 0, None)
    assert gentle.outcomes["pending"] == 6


# Portfolio: the worked examples of METRICS.md, then a ledger with known answers -------------


def test_countback_dso_reproduces_the_worked_example() -> None:
    months = [(Decimal(100_000), 30), (Decimal(80_000), 30), (Decimal(70_000), 30)]
    assert round_tenth(countback_dso(Decimal(212_000), months)) == Decimal("73.7")


def test_average_days_delinquent_reproduces_the_worked_example() -> None:
    assert average_days_delinquent(Decimal(45), Decimal(12)) == Decimal(33)


def test_cei_of_a_period_that_collected_everything_collectible_is_100() -> None:
    assert cei(Decimal(1000), Decimal(500), Decimal(300), Decimal(300)) == Decimal(100)


def test_cei_and_dso_of_a_worked_example() -> None:
    """docs/metrics.md: beginning 20,000, credit sales 30,000 over 30 days, ending 45,000 of
    which 12,000 not yet due: CEI 5,000 / 38,000 = 13.2%, DSO 45, best possible 12, ADD 33."""
    begin, sales, end, current = (Decimal(n) for n in (20_000, 30_000, 45_000, 12_000))

    assert round_tenth(cei(begin, sales, end, current)) == Decimal("13.2")
    assert simple_dso(end, sales, 30) == Decimal(45)
    assert simple_dso(current, sales, 30) == Decimal(12)


def test_portfolio_figures_from_the_ledger_as_of_dates(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """April 2026 (30 days). Owed before: B1 20,000 (issued 1 March, 5,000 paid 10 April).
    Sold in April: S1 18,000 (due 15 April, unpaid) and S2 12,000 (due 20 May, not yet due)."""
    ledger = Ledger()
    ledger.customer("P")
    ledger.invoice("B1", "P", date(2026, 3, 31), amount="20000.00")
    ledger.invoice("S1", "P", date(2026, 4, 15), amount="18000.00", issued_days_before_due=14)
    ledger.invoice("S2", "P", date(2026, 5, 20), amount="12000.00")
    ledger.payment("PB1", "B1", date(2026, 4, 10), amount="5000.00")
    ledger.load(engine, tmp_path / "ledger", settings)

    with engine.connect() as conn:
        (eur,) = portfolio(conn, date(2026, 4, 1), date(2026, 4, 30))

    assert (eur.beginning, eur.sales, eur.ending, eur.ending_current) == (
        Decimal("20000.00"), Decimal("30000.00"), Decimal("45000.00"), Decimal("12000.00"),
    )  # fmt: skip
    assert eur.simple_dso == Decimal("45.0")  # 45,000 / 30,000 x 30
    assert eur.best_possible_dso == Decimal("12.0")  # 12,000 / 30,000 x 30
    assert eur.add == Decimal("33.0")  # the METRICS.md example, from a ledger
    assert eur.countback_dso == Decimal("53.3")  # 30 (April) + 15,000 / 20,000 x 31 (March)
    assert eur.cei == Decimal("13.2")  # 5,000 / 38,000 x 100
    assert eur.cei_variant == "total credit sales of the period"


# The report: terminal JSON, the evaluate flow, the HTML file in a real browser ----------------


def test_report_json_carries_every_section(
    engine: Engine, settings: Settings, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)

    result = CliRunner().invoke(app, ["report", "--as-of", "2026-04-01", "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    gentle = next(row for row in document["stages"] if row["stage"] == "gentle")
    assert (gentle["messages"], gentle["cure_rate"], gentle["recovered"]) == (
        10, 0.3, {"EUR": "340.0000"},
    )  # fmt: skip
    assert document["attribution"] == "last touch"
    assert {row["segment"] for row in document["breakdowns"]["segment"]} == {"on_time"}
    assert document["recovery_curves"]["gentle"][2] == 0.3  # A, K, L paid in full by day 2
    (eur,) = document["portfolio"]
    assert eur["currency"] == "EUR"


def test_report_since_and_until_pick_messages_by_send_day_and_set_the_portfolio_period(
    engine: Engine, settings: Settings, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)

    result = CliRunner().invoke(
        app,
        ["report", "--as-of", "2026-04-01", "--since", "2026-03-01", "--until", "2026-03-31",
         "--json"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [row["stage"] for row in document["stages"]] == ["gentle"]  # K's pre-due: 26 Feb
    (eur,) = document["portfolio"]
    assert (eur["since"], eur["until"], eur["days"]) == ("2026-03-01", "2026-03-31", 31)


def test_the_terminal_report_shows_first_touch_and_fits_its_width(
    engine: Engine, settings: Settings, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)

    result = CliRunner().invoke(app, ["report", "--as-of", "2026-04-01"])

    assert result.exit_code == 0, result.output
    text = result.stdout
    for title in ("By stage", "Outcomes by stage", "Money by stage", "Portfolio"):
        assert title in text
    money_rows = [line.split() for line in text.splitlines() if line.split()[1:2] == ["EUR"]]
    assert ["pre_due", "EUR", "100.00", "0.00", "100.00", "100.0%"] in money_rows  # K: first touch
    assert ["gentle", "EUR", "1,000.00", "340.00", "240.00", "34.0%"] in money_rows
    assert max(len(line) for line in text.splitlines()) <= out.width
    assert "…" not in text  # nothing cut


def test_the_evaluate_flow_publishes_artifacts(
    engine: Engine, settings: Settings, ten_customers: dict[str, int]
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)

    document = evaluate(as_of=AFTER)

    assert [row["stage"] for row in document["stages"]] == ["pre_due", "gentle"]
    markdown = Artifact.get("effectiveness-report")
    assert markdown is not None and "| gentle | 10 | 30.0% | 3 | 2 |" in markdown.data
    by_stage = Artifact.get("effectiveness-by-stage")
    assert by_stage is not None and by_stage.type == "table"
    gentle = next(row for row in json.loads(by_stage.data) if row["stage"] == "gentle")
    assert (gentle["messages"], gentle["recovered.EUR"], gentle["outcomes.paid"]) == (
        10, "340.0000", 3,
    )  # fmt: skip
    portfolio_table = Artifact.get("effectiveness-portfolio")
    assert portfolio_table is not None and json.loads(portfolio_table.data)[0]["currency"] == "EUR"


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE = """<script>
const box = (e) => e.getBoundingClientRect();
const charts = [...document.querySelectorAll("figure svg")].map((svg) => ({
  width: box(svg).width, height: box(svg).height,
  lines: [...svg.querySelectorAll("polyline")].filter((l) => l.getBBox().width > 0).length,
  points: svg.querySelectorAll("circle").length,
}));
const root = document.documentElement;
const probe = document.createElement("pre");
probe.id = "probe";
probe.textContent = JSON.stringify({charts, overflow: root.scrollWidth - root.clientWidth});
document.body.append(probe);
</script></body>"""


def headless(browser: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium as a test may: no sandbox (root), no network chatter."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1200,1600", *arguments],
        check=True, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def test_the_html_report_renders_in_a_headless_browser(
    engine: Engine, settings: Settings, ten_customers: dict[str, int], tmp_path: Path
) -> None:
    with engine.begin() as conn:
        record_outcomes(conn, AFTER, WINDOW)
    page = tmp_path / "report.html"

    result = CliRunner().invoke(app, ["report", "--as-of", "2026-04-01", "--html", str(page)])

    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count("<svg") == 3 and "<script" not in html and "gentle" in html
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    if browser is None:
        pytest.skip("no Chromium on this machine: the HTML was checked, not its rendering")
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE))
    dom = headless(browser, tmp_path / "profile", "--dump-dom", probed.as_uri()).stdout
    laid_out = json.loads(unescape(dom.split('<pre id="probe">')[1].split("</pre>")[0]))
    by_month, recovery, variants = laid_out["charts"]
    assert (by_month["width"], by_month["points"]) == (560, 2)  # pre_due in Feb, gentle in March
    assert recovery["lines"] == 2  # one curve per stage, drawn with a width
    assert variants["height"] == 32  # no experiment: one line of text, no empty frame
    assert laid_out["overflow"] <= 0  # every table fits the page: no horizontal scrolling
    shot = tmp_path / "report.png"
    headless(browser, tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1200  # the page was laid out at full width
    assert len(png) > 20_000  # charts and tables, not a blank page
