"""Faults and hostile input (issue 16): nothing sent twice, nothing lost, every error named.

Each test reads what a real SMTP server on 127.0.0.1 received: aiosmtpd (`SmtpServer`), or a
raw scripted one that drops the connection in a chosen phase (`ScriptedSmtpServer`).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email import message_from_string, policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.mail import mime_body, resolve_in_doubt
from collectflow.flows.mail.workers import worker_name
from collectflow.flows.steps import deliver_due
from collectflow.models import ContactBlock, Message, MessageContent, QueueItem
from tests.ledger import Ledger
from tests.smtp_server import ScriptedSmtpServer, SmtpServer
from tests.test_deliver import (
    AS_OF,
    add_case,
    add_customer,
    add_invoice,
    add_message,
    message_row,
    overdue_reminder,
)
from tests.test_delivery_guarantees import COLLECTFLOW, arrivals, seed_reminders, statuses

BLOCKS = ContactBlock.__table__
QUEUE = QueueItem.__table__
CONTENTS = MessageContent.__table__
MESSAGES = Message.__table__
LATER = datetime(2025, 3, 12, tzinfo=UTC)  # long after any backoff or lease


def point_at(server: SmtpServer | ScriptedSmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def smtp(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        point_at(server, monkeypatch)
        yield server


def blocks(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(BLOCKS.c.scope, BLOCKS.c.value))]


# --- 1. the phase of a dropped connection ------------------------------------------------------


def test_a_reply_lost_after_the_end_of_data_is_in_doubt_and_never_resent(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = overdue_reminder(engine)
    with ScriptedSmtpServer("after_end_of_data") as server:
        point_at(server, monkeypatch)

        report = deliver_due(engine, get_settings(), AS_OF)
        again = deliver_due(engine, get_settings(), AS_OF, now=LATER)

    assert report.in_doubt == [message_id] and (report.sent, report.retrying) == (0, 0)
    assert again.sent == again.retrying == 0 and again.in_doubt == []
    assert len(server.received) == 1, "arrived once, never resent"
    row = message_row(engine, message_id)
    assert row.status == "unknown" and row.status_reason.startswith("in_doubt")
    with engine.connect() as conn:
        assert conn.execute(select(QUEUE.c.case_id, QUEUE.c.reason)).all() == [
            (row.case_id, "delivery_in_doubt")
        ]
    listed = CliRunner().invoke(app, ["in-doubt", "--json"])
    assert listed.exit_code == 0, listed.output
    [shown] = json.loads(listed.stdout)["in_doubt"]
    assert (shown["id"], shown["message_id_header"]) == (message_id, row.message_id_header)
    assert b"Message-ID: " + row.message_id_header.encode() in server.received[0]

    resolve_in_doubt(engine, [message_id], sent=True, on=AS_OF, actor="ops")

    assert message_row(engine, message_id).status == "sent"


@pytest.mark.parametrize("drop_at", ["rcpt", "data_command", "mid_data"])
def test_a_connection_dropped_before_the_end_of_data_is_retried_and_arrives_once(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, drop_at: str
) -> None:
    message_id = overdue_reminder(engine)
    if drop_at == "mid_data":  # larger than every socket buffer: still sending at the drop
        big = mime_body("Please pay.\n" + ("x" * 76 + "\n") * 110_000, None, "big")
        with engine.begin() as conn:
            conn.execute(CONTENTS.update().values(body_mime=big))
    with ScriptedSmtpServer(drop_at) as server:
        point_at(server, monkeypatch)

        report = deliver_due(engine, get_settings(), AS_OF)
        row = message_row(engine, message_id)
        retried = deliver_due(engine, get_settings(), AS_OF, now=row.next_attempt_at)

    assert (report.retrying, report.in_doubt, report.sent) == (1, [], 0)
    assert row.status == "planned" and row.next_attempt_at is not None
    assert retried.sent == 1 and message_row(engine, message_id).status == "sent"
    assert len(server.received) == 1, "the whole message arrived once"


# --- 2. internationalised addresses ------------------------------------------------------------


def test_an_internationalised_domain_goes_out_as_punycode_and_deliver_prints_its_report(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(engine, to_address="idn@exämple.org")

    result = CliRunner().invoke(app, ["deliver", "--as-of", AS_OF.isoformat(), "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 1
    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["idn@xn--exmple-cua.org"]
    assert envelope.parse()["To"].addresses[0].addr_spec == "idn@xn--exmple-cua.org"
    assert message_row(engine, message_id).status == "sent"


def test_a_non_ascii_local_part_fails_alone_when_the_server_lacks_smtputf8(
    engine: Engine, smtp: SmtpServer
) -> None:
    with engine.begin() as conn:
        ids = []
        for n, address in enumerate(["c0@example.org", "jörg@exämple.org", "c2@example.org"]):
            customer = add_customer(conn, f"C{n}", email=address)
            invoice = add_invoice(conn, customer, f"INV-{n}")
            ids.append(add_message(conn, add_case(conn, customer), customer, [invoice],
                                   to_address=address))  # fmt: skip

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.sent, report.failed) == (2, {"smtputf8_unsupported": 1})
    assert sorted(e.rcpt_tos[0] for e in smtp.envelopes) == ["c0@example.org", "c2@example.org"]
    row = message_row(engine, ids[1])
    assert row.status == "failed" and "SMTPUTF8" in row.last_error
    assert blocks(engine) == []


def test_a_non_ascii_local_part_goes_out_with_smtputf8_when_offered(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = overdue_reminder(engine, to_address="jörg@exämple.org")
    with SmtpServer(smtputf8=True) as server:
        point_at(server, monkeypatch)

        report = deliver_due(engine, get_settings(), AS_OF)

    assert report.sent == 1 and message_row(engine, message_id).status == "sent"
    [envelope] = server.envelopes
    assert envelope.rcpt_tos == ["jörg@xn--exmple-cua.org"]
    arrived = message_from_string(envelope.content.decode("utf-8"), policy=policy.default)
    assert arrived["To"].addresses[0].addr_spec == "jörg@xn--exmple-cua.org"


# --- 3. long names, and 5xx that are our fault ----------------------------------------------


def test_a_3000_character_name_arrives_in_lines_the_server_accepts(
    engine: Engine, smtp: SmtpServer
) -> None:
    message_id = overdue_reminder(engine, name="Ada " + "L" * 3000)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert report.sent == 1 and message_row(engine, message_id).status == "sent"
    [envelope] = smtp.envelopes
    head = envelope.content.split(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998 - 800
    [to] = envelope.parse()["To"].addresses
    assert to.addr_spec == "ada@example.org"
    assert to.display_name.startswith("Ada LLL") and len(to.display_name) <= 100
    assert blocks(engine) == []


@pytest.mark.parametrize(
    "reply",
    [
        "500 5.5.2 Line too long",
        "501 5.5.4 Syntax error in parameters",
        "554 5.6.0 Message header syntax error",
        "550 Line too long (see RFC5321 4.5.3.1.6)",
    ],
)
def test_a_5xx_about_our_message_fails_it_and_blocks_no_address(
    engine: Engine, smtp: SmtpServer, reply: str
) -> None:
    message_id = overdue_reminder(engine)
    smtp.answer(reply)

    report = deliver_due(engine, get_settings(), AS_OF)

    assert (report.bounced, report.failed) == (0, {"refused_as_malformed": 1})
    row = message_row(engine, message_id)
    assert row.status == "failed" and reply in row.status_reason
    assert blocks(engine) == []
    with engine.begin() as conn:  # the next stage to the same address still goes out
        later = add_message(conn, row.case_id, "C1", ["INV-1"], stage_index=1)
    assert deliver_due(engine, get_settings(), AS_OF).sent == 1
    assert message_row(engine, later).status == "sent"


# --- 8. a name that is an encoded word --------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["=?utf-8?q?Evil=0D=0ABcc:_x@y.org?=", "Ann =?utf-8?b?RXZpbA0KQmNjOiB4QHkub3Jn?= Lee"],
)
def test_a_name_that_is_an_encoded_word_with_cr_lf_stays_text(
    engine: Engine, smtp: SmtpServer, name: str
) -> None:
    overdue_reminder(engine, name=name)

    deliver_due(engine, get_settings(), AS_OF)

    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["ada@example.org"]
    email = BytesParser(policy=policy.default).parsebytes(envelope.content)
    assert email["Bcc"] is None
    [to] = email["To"].addresses
    assert to.addr_spec == "ada@example.org"
    assert " ".join(to.display_name.split()) == name, "(Python reads a space more between words)"
    strict = BytesParser(policy=policy.strict).parsebytes(envelope.content)
    assert "\r" not in str(strict["To"]) and "\n" not in str(strict["To"])


# --- 6. a killed run: its messages in doubt at once ------------------------------------------


def test_a_killed_delivery_is_found_by_the_next_one_at_once_in_doubt_and_never_resent(
    engine: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    seed_reminders(engine, 300)
    smtp.slow_down(0.02)  # 4 connections: about 200 messages a second
    deliver = [*COLLECTFLOW, "deliver", "--as-of", AS_OF.isoformat(), "--json"]
    with (tmp_path / "killed.log").open("w") as log:  # the lease stays 900 s: never expires
        worker = subprocess.Popen(deliver, stdout=log, stderr=log)
        while len(smtp.envelopes) < 50:
            assert worker.poll() is None, (tmp_path / "killed.log").read_text()
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed = statuses(engine)
    in_flight = {n for n, status in killed.items() if status == "sending"}
    assert in_flight

    restart = subprocess.run(deliver, capture_output=True, text=True, check=True)

    report = json.loads(restart.stdout)
    assert sorted(report["in_doubt"]) == sorted(in_flight), "found at once, every one"
    assert "in doubt" in restart.stderr
    final = statuses(engine)
    assert {n for n, status in final.items() if status == "unknown"} == in_flight
    assert {n for n, status in final.items() if status == "sent"} == set(killed) - in_flight
    assert max(arrivals(smtp).values()) == 1, "nothing sent twice"
    listed = CliRunner().invoke(app, ["in-doubt", "--json"])
    rows = json.loads(listed.stdout)["in_doubt"]
    assert {row["id"] for row in rows} == in_flight
    assert all("process is gone" in row["status_reason"] for row in rows)


def test_in_doubt_lists_the_messages_of_a_dead_worker_without_waiting_for_its_lease(
    engine: Engine, settings: Settings
) -> None:
    seed_reminders(engine, 2)
    dead = f"{socket.gethostname()}:{_pid_of_finished_process()}:abc123"
    lease = datetime.now(UTC) + timedelta(minutes=15)
    with engine.begin() as conn:  # message 2: claimed by this very process, alive
        for message_id, claimer in ((1, dead), (2, worker_name())):
            claimed = {"status": "sending", "claimed_by": claimer, "lease_until": lease}
            conn.execute(update(MESSAGES).where(MESSAGES.c.id == message_id).values(**claimed))

    listed = CliRunner().invoke(app, ["in-doubt", "--json"])

    assert listed.exit_code == 0, listed.output
    assert [row["id"] for row in json.loads(listed.stdout)["in_doubt"]] == [1]
    assert statuses(engine) == {1: "unknown", 2: "sending"}


def _killed_day(engine: Engine, settings: Settings, tmp_path: Path) -> tuple[str, int]:
    """A day whose delivery was killed mid-send: its one message `sending` under a dead
    claimer of this host, lease still running. Returns the day and the message id."""
    due = date(2026, 3, 2)
    ledger = Ledger()
    ledger.customer("LATE")
    ledger.history("LATE", due)
    ledger.invoice("INV-LATE", "LATE", due)
    ledger.load(engine, tmp_path / "ledger", settings)
    day = (due - timedelta(days=3)).isoformat()
    assert CliRunner().invoke(app, ["run", "--as-of", day, "--skip-delivery"]).exit_code == 0
    with engine.begin() as conn:  # the run that delivered it was killed mid-send
        dead = f"{socket.gethostname()}:{_pid_of_finished_process()}:abc123"
        [message_id] = conn.execute(
            update(MESSAGES).values(status="sending", claimed_by=dead,
                                    lease_until=datetime.now(UTC) + timedelta(minutes=15))
            .returning(MESSAGES.c.id)
        ).scalars()  # fmt: skip
    return day, message_id


def test_the_rerun_of_a_killed_day_reports_what_it_found_in_doubt(
    engine: Engine, settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    day, message_id = _killed_day(engine, settings, tmp_path)

    rerun = CliRunner().invoke(app, ["run", "--as-of", day, "--json"])

    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["in_doubt"] == [message_id]
    assert any("in doubt" in note for note in summary["notes"])
    assert smtp.envelopes == [], "not resent"


def test_the_rerun_of_a_killed_day_says_so_on_the_terminal_too(
    engine: Engine, settings: Settings, smtp: SmtpServer, tmp_path: Path
) -> None:
    day, _ = _killed_day(engine, settings, tmp_path)

    rerun = CliRunner().invoke(app, ["run", "--as-of", day])

    assert rerun.exit_code == 0, rerun.output
    assert "1 message(s) in doubt" in rerun.stdout
    assert "collectflow in-doubt" in rerun.stdout
    assert smtp.envelopes == [], "not resent"


def _pid_of_finished_process() -> int:
    """The pid of a process that has run and been reaped: no process has it now."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
