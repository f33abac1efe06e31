"""The outbox's promises: every move logged, each message sent once by several worker
processes, and a crash leaving only the in-flight messages in doubt, reported, never resent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select, update
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.errors import NotInDoubt
from collectflow.flows.mail import in_doubt, mime_body, resolve_in_doubt
from collectflow.flows.mail.delivery import FLUSH_SIZE
from collectflow.flows.mail.workers import recheck_expired_leases
from collectflow.flows.steps import deliver_due, deliver_with_workers
from collectflow.models import (
    Case,
    Customer,
    Invoice,
    Message,
    MessageContent,
    MessageEvent,
    MessageItem,
    QueueItem,
)
from tests.ledger import Ledger
from tests.outbox import with_bodies
from tests.smtp_server import SmtpServer

AS_OF = date(2025, 3, 10)
MESSAGES = Message.__table__
EVENTS = MessageEvent.__table__
QUEUE = QueueItem.__table__
COLLECTFLOW = [sys.executable, "-c", "from collectflow.flows.cli.app import main; main()"]


def seed_reminders(engine: Engine, count: int) -> None:
    """`count` customers, each owing one invoice and due one rendered reminder today."""
    ids = range(count)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer.__table__),
            [{"customer_id": f"C{n}", "name": f"Customer {n}", "email": f"c{n}@example.org"}
             for n in ids],
        )  # fmt: skip
        conn.execute(
            insert(Invoice.__table__),
            [{"invoice_id": f"INV-{n}", "customer_id": f"C{n}", "issued_on": date(2025, 1, 10),
              "due_on": date(2025, 2, 10), "amount": Decimal("100.00"), "currency": "EUR"}
             for n in ids],
        )  # fmt: skip
        conn.execute(
            insert(Case.__table__),
            [{"id": n + 1, "customer_id": f"C{n}", "segment": "s", "ladder": "standard",
              "opened_on": AS_OF} for n in ids],
        )  # fmt: skip
        conn.execute(
            insert(MESSAGES),
            [{"id": n + 1, "key": f"case:{n + 1}:gentle", "case_id": n + 1, "customer_id": f"C{n}",
              "stage": "gentle", "stage_index": 0, "template": "gentle",
              "to_address": f"c{n}@example.org", "planned_on": AS_OF, "subject": f"Invoice {n}",
              "rendered_at": datetime(2025, 3, 10, 6, tzinfo=UTC)}
             for n in ids],
        )  # fmt: skip
        conn.execute(
            insert(MessageContent.__table__),
            [{"message_id": n + 1,
              "body_mime": mime_body("Please pay.", None, f"case:{n + 1}:gentle")} for n in ids],
        )  # fmt: skip
        conn.execute(
            insert(MessageItem.__table__),
            [{"message_id": n + 1, "invoice_id": f"INV-{n}", "currency": "EUR",
              "owed": Decimal("100.00")} for n in ids],
        )  # fmt: skip
        if conn.dialect.name == "postgresql":  # explicit ids: move the sequences past them
            for table in ("cases", "messages"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {count + 1})"
                )


def statuses(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(MESSAGES.c.id, MESSAGES.c.status)).all())


def arrivals(smtp: SmtpServer) -> Counter[int]:
    """How many times each message arrived, by the message id its subject carries."""
    return Counter(int(str(email["Subject"]).split()[-1]) + 1 for email in smtp.emails)


@pytest.fixture
def smtp(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        yield server


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_with_skip_delivery_only_plans_and_renders_and_deliver_sends(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    due = date(2026, 3, 2)
    ledger = Ledger()
    ledger.customer("LATE")
    ledger.history("LATE", due)
    ledger.invoice("INV-LATE", "LATE", due)
    ledger.load(engine, tmp_path / "ledger", settings)
    pre_due = (due - timedelta(days=3)).isoformat()
    runner = CliRunner()

    run = runner.invoke(app, ["run", "--as-of", pre_due, "--skip-delivery", "--json"])

    assert run.exit_code == 0, run.output
    with engine.connect() as conn:
        [message] = with_bodies(conn)
    assert (message.stage, message.status) == ("pre_due", "planned")
    assert message.subject and message.body_text, "rendered"
    assert not (settings.outbox / "new").exists() or not any((settings.outbox / "new").iterdir())

    deliver = runner.invoke(app, ["deliver", "--as-of", pre_due, "--json"])

    assert deliver.exit_code == 0, deliver.output
    assert json.loads(deliver.stdout)["sent"] == 1
    [email] = [BytesParser(policy=policy.default).parsebytes(path.read_bytes())
               for path in (settings.outbox / "new").iterdir()]  # fmt: skip
    assert email["To"].addresses[0].addr_spec == "late@example.com"
    with engine.connect() as conn:
        sent = conn.execute(select(MESSAGES).where(MESSAGES.c.id == message.id)).one()
    assert (sent.status, email["Message-ID"]) == ("sent", sent.message_id_header)


def test_every_move_is_logged_with_its_time_worker_and_reason(
    engine: Engine, smtp: SmtpServer
) -> None:
    seed_reminders(engine, 2)
    with engine.begin() as conn:
        conn.execute(update(Invoice.__table__).where(Invoice.invoice_id == "INV-1").values(
            status="paid"))  # fmt: skip

    deliver_due(engine, get_settings(), AS_OF)

    with engine.connect() as conn:
        moves = conn.execute(
            select(EVENTS.c.message_id, EVENTS.c.from_status, EVENTS.c.to_status,
                   EVENTS.c.reason, EVENTS.c.worker, EVENTS.c.at).order_by(EVENTS.c.id)
        ).all()  # fmt: skip
    assert [move[:4] for move in moves] == [
        (2, "planned", "suppressed", "paid_before_send"),
        (1, "planned", "sending", None),
        (1, "sending", "sent", None),
    ]
    assert len({move.worker for move in moves}) == 1 and str(os.getpid()) in moves[0].worker
    assert all(move.at.tzinfo is not None for move in moves)


def test_a_message_left_sending_past_its_lease_is_in_doubt_not_resent(
    engine: Engine, smtp: SmtpServer
) -> None:
    seed_reminders(engine, 3)
    lease_ended = datetime(2025, 3, 10, 9, tzinfo=UTC)
    with engine.begin() as conn:  # a worker claimed message 1 and died
        conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == 1)
            .values(status="sending", claimed_by="host:999:dead", lease_until=lease_ended)
        )

    report = deliver_due(engine, get_settings(), AS_OF, now=lease_ended + timedelta(seconds=1))

    assert (report.sent, report.in_doubt) == (2, [1])
    assert statuses(engine) == {1: "unknown", 2: "sent", 3: "sent"}
    assert sorted(arrivals(smtp)) == [2, 3]
    with engine.connect() as conn:
        assert conn.execute(select(QUEUE.c.case_id, QUEUE.c.reason)).all() == [
            (1, "delivery_in_doubt")
        ]
    assert deliver_due(engine, get_settings(), AS_OF).sent == 0  # still not resent

    with pytest.raises(NotInDoubt, match="2"):
        resolve_in_doubt(engine, [1, 2], sent=False, on=AS_OF, actor="ops")
    resolve_in_doubt(engine, [1], sent=False, on=AS_OF, actor="ops")  # the log shows no trace

    assert deliver_due(engine, get_settings(), AS_OF).sent == 1
    assert arrivals(smtp) == {1: 1, 2: 1, 3: 1}


def test_under_a_rate_limit_no_lease_runs_out_while_its_message_waits_its_turn(
    engine: Engine, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_SMTP_RATE_PER_SECOND", "4")
    monkeypatch.setenv("COLLECTFLOW_DELIVERY_LEASE_SECONDS", "2")
    monkeypatch.setenv("COLLECTFLOW_SMTP_CONCURRENCY", "1")
    get_settings.cache_clear()
    seed_reminders(engine, 12)  # three seconds of sending at 4 a second
    worker = threading.Thread(target=deliver_due, args=(engine, get_settings(), AS_OF))
    worker.start()
    time.sleep(2.4)  # had it claimed all 12 at once, the last ones' leases would be over

    found = recheck_expired_leases(engine, AS_OF, datetime.now(UTC), "another worker")

    worker.join()
    assert found == []
    assert arrivals(smtp) == {n: 1 for n in range(1, 13)}
    assert set(statuses(engine).values()) == {"sent"}


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_four_worker_processes_deliver_two_thousand_messages_each_exactly_once(
    engine: Engine, smtp: SmtpServer
) -> None:
    seed_reminders(engine, 2000)

    report = deliver_with_workers(get_settings(), AS_OF, workers=4, batch_size=100)

    assert report.sent == 2000
    assert arrivals(smtp) == {n: 1 for n in range(1, 2001)}
    assert set(statuses(engine).values()) == {"sent"}
    with engine.connect() as conn:
        workers = conn.execute(select(func.count(func.distinct(MESSAGES.c.claimed_by)))).scalar()
    assert workers == 4, "every process took a share"


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_worker_killed_mid_batch_leaves_only_its_in_flight_messages_in_doubt(
    engine: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    seed_reminders(engine, 400)
    smtp.slow_down(0.02)  # 4 connections: about 200 messages a second
    env = os.environ | {"COLLECTFLOW_DELIVERY_LEASE_SECONDS": "1"}
    deliver = [*COLLECTFLOW, "deliver", "--as-of", AS_OF.isoformat(), "--json"]
    worker = subprocess.Popen(deliver, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while len(smtp.envelopes) < 100:
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(1.1)  # its lease runs out
    killed = statuses(engine)
    in_flight = {n for n, status in killed.items() if status == "sending"}
    # at most: a batch claimed ahead, one message per sender, results not yet written
    assert 0 < len(in_flight) <= 200 + 4 + FLUSH_SIZE

    restart = subprocess.run(deliver, env=env, capture_output=True, text=True, check=True)

    report = json.loads(restart.stdout)
    assert sorted(report["in_doubt"]) == sorted(in_flight), "reported, every one"
    final = statuses(engine)
    assert {n for n, status in final.items() if status == "unknown"} == in_flight
    assert {n for n, status in final.items() if status == "sent"} == set(killed) - in_flight
    arrived = arrivals(smtp)
    assert max(arrived.values()) == 1, "nothing sent twice"
    assert set(arrived) >= set(killed) - in_flight, "nothing lost"
    assert report["sent"] + sum(killed[n] == "sent" for n in killed) == 400 - len(in_flight)

    # the operator looks each in-doubt Message-ID up in the server's log, and settles them
    with engine.connect() as conn:
        listed = {row["id"]: row["message_id_header"] for row in in_doubt(conn)}
    assert set(listed) == in_flight and all(listed.values()), "each with its Message-ID"
    arrived_ids = {int(str(e["Subject"]).split()[-1]) + 1: e["Message-ID"] for e in smtp.emails}
    assert all(listed[n] == arrived_ids[n] for n in in_flight if n in arrived_ids)
    delivered = [n for n in in_flight if n in arrived]
    missing = [n for n in in_flight if n not in arrived]
    if delivered:
        resolve_in_doubt(engine, delivered, sent=True, on=AS_OF, actor="ops")
    if missing:
        resolve_in_doubt(engine, missing, sent=False, on=AS_OF, actor="ops")
    deliver_due(engine, get_settings(), AS_OF)

    assert arrivals(smtp) == {n: 1 for n in range(1, 401)}
    assert set(statuses(engine).values()) == {"sent"}
