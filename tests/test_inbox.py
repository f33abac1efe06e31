"""The inbox read back: customers got a real reminder (rendered, delivered to the outbox
Maildir); what comes back (bounces of each MTA's layout, automatic replies, replies in three
languages, junk) lands in a Maildir, and `read_inbox` files it once, matched, applied or
queued, every mail kept and moved to cur/ with the Seen flag."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from babel.dates import format_date
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings
from collectflow.flows.feedback.inbox import read_inbox
from collectflow.flows.feedback.maildir_inbox import MaildirInbox
from collectflow.flows.mail.contact import BOUNCED
from collectflow.flows.pipeline import business_today, open_run, run_day
from collectflow.flows.policy import Policy
from collectflow.models import (
    CaseEvent,
    ContactBlock,
    CustomerAnswer,
    Dispute,
    InboundMail,
    Message,
    Promise,
    QueueItem,
)
from tests.inbound import bounce, files, inbox, reminded, reply

INBOUND, ANSWERS, QUEUE = InboundMail.__table__, CustomerAnswer.__table__, QueueItem.__table__
BLOCKS, MESSAGES, EVENTS = ContactBlock.__table__, Message.__table__, CaseEvent.__table__

HARD = {
    "POSTFIX": "postfix_hard.eml",
    "EXIM": "exim_hard.eml",
    "OUTLOOK": "exchange_online_hard.eml",
    "EXCHANGE": "exchange_legacy_hard.eml",
    "GMAIL": "gmail_hard.eml",
}
SOFT = {"DELAYED": "gmail_delayed.eml", "EXPIRED": "postfix_expired.eml"}


@pytest.fixture
def today(settings: Settings) -> date:
    return business_today(settings)


def read(engine: Engine, policy: Policy, path: Path, today: date) -> dict[str, Any]:
    return read_inbox(engine, policy, [MaildirInbox(path)], today).to_dict()


def rows(engine: Engine, *where: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(select(INBOUND).where(*where).order_by(INBOUND.c.id)).mappings()
        return [dict(row) for row in found]


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def queued(engine: Engine, reason: str) -> dict[str, dict[str, Any]]:
    """Open queue items of `reason`, by customer id."""
    with engine.connect() as conn:
        found = conn.execute(
            select(QUEUE).where(QUEUE.c.reason == reason, QUEUE.c.resolved_on.is_(None))
        ).mappings()
        return {row["customer_id"]: dict(row) for row in found}


def test_each_bounce_layout_is_matched_and_a_permanent_one_blocks_the_address(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    customers = dict.fromkeys([*HARD, *SOFT], "en")
    sent = reminded(engine, settings, tmp_path / "ledger", today, customers)
    samples = HARD | SOFT
    mails = [
        bounce(samples[who], sent[who]["to_address"], sent[who]["message_id_header"])
        for who in samples
    ]

    report = read(engine, policy, inbox(tmp_path / "inbox", *mails), today)

    assert report["kinds"]["bounce"] == 7 and report["bounces"] == {"hard": 5, "soft": 2}
    filed = {row["customer_id"]: row for row in rows(engine)}
    with engine.connect() as conn:
        blocked = set(conn.scalars(select(BLOCKS.c.value).where(BLOCKS.c.reason == BOUNCED)))
        status = dict(conn.execute(select(MESSAGES.c.customer_id, MESSAGES.c.status)).all())
    for who in HARD:
        assert filed[who]["status"] == "applied" and filed[who]["bounce"].startswith("hard")
        expected_match = "recipient" if who == "EXCHANGE" else "returned"
        assert filed[who]["matched_by"] == expected_match, who
        assert sent[who]["to_address"] in blocked, who
        assert status[who] == ("sent" if who == "EXCHANGE" else "bounced"), who
    for who in SOFT:
        assert (filed[who]["status"], filed[who]["bounce"].split()[0]) == ("recorded", "soft")
        assert sent[who]["to_address"] not in blocked and status[who] == "sent", who
    assert set(queued(engine, "no_valid_address")) == set(HARD)
    assert {filed[who]["bounce"] for who in ("POSTFIX", "OUTLOOK")} == {"hard 5.1.1", "hard 5.1.10"}


def test_after_a_permanent_bounce_nothing_more_goes_to_the_address(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "en"})
    anna = sent["ANNA"]
    raw = bounce("postfix_hard.eml", anna["to_address"], anna["message_id_header"])
    read(engine, policy, inbox(tmp_path / "inbox", raw), today)

    later_day = today + timedelta(days=16)  # the next stage is due by then (21 days overdue)
    with open_run(settings) as ctx:
        run_day(ctx, later_day)

    with engine.connect() as conn:
        later = conn.execute(
            select(MESSAGES.c.customer_id, MESSAGES.c.status, MESSAGES.c.status_reason).where(
                MESSAGES.c.planned_on == later_day
            )
        ).all()
    assert ("ANNA", "suppressed", "address_bounced") in later
    assert any(who == "BERT" and state == "sent" for who, state, _ in later)


def test_replies_are_matched_by_thread_or_sender_read_and_applied(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(
        engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "fr", "CARL": "de"}
    )
    pay_by = today + timedelta(days=10)
    quoted = "\n\nOn Sat, Dec 5, 2026 at 9:12 AM Accounts <billing@example.com> wrote:\n> "
    mails = [  # ANNA answers the thread; BERT and CARL write anew, from their own address
        reply(sent["ANNA"]["to_address"], "I have already paid it." + quoted + "Pay now",
              to=sent["ANNA"]),
        reply(sent["BERT"]["to_address"],
              f"Bonjour, je paierai le {format_date(pay_by, 'd MMMM', locale='fr')}."),
        reply(sent["CARL"]["to_address"], "Bitte keine E-Mails mehr, ich möchte mich abmelden."),
    ]  # fmt: skip

    report = read(engine, policy, inbox(tmp_path / "inbox", *mails), today)

    assert report["kinds"]["reply"] == 3 and report["applied"] == 3 and report["queued"] == 0
    filed = {row["customer_id"]: row for row in rows(engine)}
    assert filed["ANNA"]["matched_by"] == "thread"
    assert filed["ANNA"]["message_id"] == sent["ANNA"]["id"]
    assert filed["BERT"]["matched_by"] == filed["CARL"]["matched_by"] == "sender"
    assert filed["BERT"]["said_on"] == pay_by
    with engine.connect() as conn:
        answers = conn.execute(
            select(ANSWERS.c.customer_id, ANSWERS.c.intent, ANSWERS.c.source)
        ).all()
        promise = conn.execute(select(Promise.__table__.c.promised_on)).scalar_one()
        opted_out = conn.scalars(select(BLOCKS.c.value).where(BLOCKS.c.reason == "opted_out"))
        events = conn.scalars(select(EVENTS.c.detail).where(EVENTS.c.kind == "customer_response"))
        opted_out, events = list(opted_out), list(events)
    assert sorted(answers) == [
        ("ANNA", "already_paid", "reply"),
        ("BERT", "need_time", "reply"),
        ("CARL", "unsubscribe", "reply"),
    ]
    assert promise == pay_by and opted_out == ["CARL"]
    assert {json.loads(detail)["intent"] for detail in events} == {
        "already_paid", "need_time", "unsubscribe",
    }  # fmt: skip


def test_an_automatic_reply_is_recorded_and_never_read_for_an_intent(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en"})
    anna = sent["ANNA"]
    out_of_office = reply(
        anna["to_address"],
        "I am out of the office. I already paid; please unsubscribe me.",
        to=anna,
        subject="Automatic reply: Reminder",
    )

    report = read(engine, policy, inbox(tmp_path / "inbox", out_of_office), today)

    assert report["kinds"] == {"bounce": 0, "auto_reply": 1, "reply": 0, "unreadable": 0}
    [row] = rows(engine)
    assert (row["kind"], row["status"], row["intent"], row["customer_id"]) == (
        "auto_reply", "recorded", None, "ANNA",
    )  # fmt: skip
    assert count(engine, ANSWERS) == 0 and count(engine, BLOCKS) == 0


def test_an_unsure_reply_waits_for_an_operator_who_confirms_it_in_one_action(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en"})
    anna = sent["ANNA"]
    mail = reply(anna["to_address"], "Could we set up a payment plan?\nThanks, Anna", to=anna)

    report = read(engine, policy, inbox(tmp_path / "inbox", mail), today)

    assert report["queued"] == 1 and report["applied"] == 0
    item = queued(engine, "reply_needs_reading")["ANNA"]
    assert item["case_id"] == anna["case_id"]
    assert "suggests need_time (0.60" in item["detail"]
    assert "Could we set up a payment plan? / Thanks, Anna" in item["detail"]
    assert count(engine, Promise.__table__) == 0

    pay_by = today + timedelta(days=7)
    result = CliRunner().invoke(
        app, ["confirm-reply", str(item["id"]), "--date", pay_by.isoformat(), "--json"]
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["action"] == "Reply confirmed"
    with engine.connect() as conn:
        promised = conn.execute(select(Promise.__table__.c.promised_on)).scalar_one()
        answer = conn.execute(select(ANSWERS.c.intent, ANSWERS.c.source)).one()
    assert promised == pay_by and tuple(answer) == ("need_time", "reply")
    assert "ANNA" not in queued(engine, "reply_needs_reading")
    assert rows(engine)[0]["status"] == "confirmed"
    again = CliRunner().invoke(app, ["confirm-reply", str(item["id"]), "--json"])
    assert again.exit_code == 2 and "resolved" in again.output


def test_an_opt_out_or_a_dispute_below_the_threshold_is_never_applied(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "en"})
    strict = policy.model_copy(
        update={"replies": policy.replies.model_copy(update={"apply_threshold": 0.95})}
    )
    mails = [
        reply(sent["ANNA"]["to_address"], "Please unsubscribe me.", to=sent["ANNA"]),  # 0.9
        reply(sent["BERT"]["to_address"], "We never received the goods.", to=sent["BERT"]),
    ]

    report = read(engine, strict, inbox(tmp_path / "inbox", *mails), today)

    assert report["queued"] == 2 and report["applied"] == 0
    assert count(engine, BLOCKS) == 0 and count(engine, Dispute.__table__) == 0
    assert count(engine, ANSWERS) == 0
    items = queued(engine, "reply_needs_reading")
    assert "suggests unsubscribe (0.90; below the threshold 0.95)" in items["ANNA"]["detail"]
    assert "suggests order_problem (0.85" in items["BERT"]["detail"]


def test_filing_twice_does_nothing_and_a_crash_before_the_move_loses_nothing(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "en"})
    mails = [
        reply(sent["ANNA"]["to_address"], "I already paid.", to=sent["ANNA"]),
        reply(sent["BERT"]["to_address"], "Hmm, maybe a refund?", to=sent["BERT"]),
        bounce("gmail_hard.eml", sent["BERT"]["to_address"], sent["BERT"]["message_id_header"]),
    ]
    path = inbox(tmp_path / "inbox", *mails)

    class CrashAfterFiling(MaildirInbox):
        def done(self, fetched: Any) -> None:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        read_inbox(engine, policy, [CrashAfterFiling(path)], today)
    assert len(files(path, "new")) == 3 and len(rows(engine)) == 3
    assert count(engine, ANSWERS) == 0  # the crash came before the replies were applied

    again = read(engine, policy, path, today)

    assert again["read"] == 3 and again["already_filed"] == 3
    assert sum(again["kinds"].values()) == 0
    assert again["applied"] == 1  # the reply the crash left pending
    assert files(path, "new") == [] and all(name.endswith(":2,S") for name in files(path, "cur"))
    settled = {table.name: count(engine, table) for table in (ANSWERS, QUEUE, BLOCKS, EVENTS)}
    inbox(path, *mails)  # the same mails delivered once more

    third = read(engine, policy, path, today)

    assert third["already_filed"] == 3 and third["applied"] == 0
    assert {table.name: count(engine, table) for table in (ANSWERS, QUEUE, BLOCKS, EVENTS)} == (
        settled
    )
    assert settled["customer_answers"] == 1 and settled["contact_blocks"] == 1
    assert len(rows(engine)) == 3


def test_malformed_and_unknown_mail_never_stops_the_run_and_is_kept(
    engine: Engine, settings: Settings, policy: Policy, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en"})
    junk = [
        b"\x00\xff\xfe not a mail at all \x80",
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\n"
        b"Content-Transfer-Encoding: base64\n\n!!!===\n",
        reply("stranger@elsewhere.example", "Who are you? I paid nothing."),
    ]
    good = reply(sent["ANNA"]["to_address"], "Payment has been made.", to=sent["ANNA"])
    path = inbox(tmp_path / "inbox", *junk, good)

    report = read(engine, policy, path, today)

    assert report["read"] == 4 and report["applied"] == 1
    assert report["unmatched"] == 3
    assert len(rows(engine)) == 4
    assert files(path, "new") == [] and len(files(path, "cur")) == 4  # kept, marked read


def test_collectflow_inbox_prints_counts_per_kind_and_intent(
    engine: Engine, settings: Settings, tmp_path: Path, today: date
) -> None:
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "de"})
    path = inbox(
        tmp_path / "inbox",
        reply(sent["ANNA"]["to_address"], "Card declined, sorry.", to=sent["ANNA"]),
        reply(sent["BERT"]["to_address"], "Out", subject="Abwesenheitsnotiz: Erinnerung"),
        bounce("postfix_expired.eml", sent["BERT"]["to_address"], "<unknown@example.com>"),
    )

    result = CliRunner().invoke(app, ["inbox", "--maildir", str(path), "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["kinds"] == {"bounce": 1, "auto_reply": 1, "reply": 1, "unreadable": 0}
    assert document["intents"]["payment_failed"] == 1
    assert document["applied"] == 1 and document["sources"] == [f"maildir:{path}"]
    plain = CliRunner().invoke(app, ["inbox", "--maildir", str(tmp_path / "nowhere")])
    assert plain.exit_code == 2 and "not a Maildir" in " ".join(plain.output.split())


def test_a_sender_two_customers_share_waits_for_an_operator_who_may_just_mark_it_read(
    engine: Engine, settings: Settings, tmp_path: Path, today: date
) -> None:
    from collectflow.flows.inbox import inbox as inbox_flow

    shared = {"ANNA": "accounts@holding.example", "BERT": "accounts@holding.example"}
    reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "en"}, shared)
    path = inbox(tmp_path / "inbox", reply("accounts@holding.example", "We already paid."))

    report = inbox_flow(maildir=str(path))  # the hourly deployment's flow, run for real

    assert report["queued"] == 1 and report["applied"] == 0
    [item] = queued(engine, "reply_needs_reading").values()
    assert "shared by customers ANNA, BERT" in item["detail"]
    by_hand = CliRunner().invoke(app, ["queue", "done", str(item["id"]), "--operator", "ana",
                                       "--note", "read it"])  # fmt: skip
    assert by_hand.exit_code == 2 and "confirm-reply" in by_hand.output

    result = CliRunner().invoke(
        app, ["confirm-reply", str(item["id"]), "--intent", "other", "--operator", "ana"]
    )

    assert result.exit_code == 0, result.output
    assert count(engine, ANSWERS) == 0 and queued(engine, "reply_needs_reading") == {}
    [row] = rows(engine)
    assert (row["status"], row["intent"]) == ("read", "other")
