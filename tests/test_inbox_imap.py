"""The IMAP inbox against a real server (Dovecot on 127.0.0.1, over TLS with a certificate
made for the test): mail filed once, moved to the processed folder, never lost; settings that
would send a password in clear, or a wrong one, refused with the reason."""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.errors import ConfigError
from collectflow.flows.feedback.imap_inbox import ImapInbox
from collectflow.flows.pipeline import business_today
from collectflow.models import CustomerAnswer, InboundMail
from tests.imap_server import DovecotServer, unavailable
from tests.inbound import bounce, reminded, reply

pytestmark = [
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),  # IMAP, not the DB
]


@pytest.fixture
def dovecot(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[DovecotServer]:
    with DovecotServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        yield server
    get_settings.cache_clear()


def message_ids(mails: list[bytes]) -> list[str]:
    return sorted(str(email.message_from_bytes(raw)["Message-ID"]) for raw in mails)


def test_imap_mail_is_filed_once_and_moved_to_the_processed_folder(
    engine: Engine, settings: Settings, dovecot: DovecotServer, tmp_path: Path
) -> None:
    today: date = business_today(settings)
    sent = reminded(engine, settings, tmp_path / "ledger", today, {"ANNA": "en", "BERT": "fr"})
    mails = [
        reply(sent["ANNA"]["to_address"], "I have already paid.", to=sent["ANNA"]),
        reply(sent["BERT"]["to_address"], "Merci", subject="Réponse automatique : Rappel"),
        bounce("postfix_hard.eml", sent["BERT"]["to_address"], sent["BERT"]["message_id_header"]),
    ]
    dovecot.deliver(*mails)

    first = CliRunner().invoke(app, ["inbox", "--json"])

    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["sources"] == ["imap:collect@127.0.0.1/INBOX"]
    assert report["kinds"] == {"bounce": 1, "auto_reply": 1, "reply": 1, "unreadable": 0}
    assert report["applied"] == 1 and report["bounces"]["hard"] == 1
    assert dovecot.messages("INBOX") == []
    assert "Collectflow.Processed" in dovecot.folders()  # the server's separator is "."
    assert message_ids(dovecot.messages("Collectflow.Processed")) == message_ids(mails)
    with engine.connect() as conn:
        sources = conn.scalars(select(InboundMail.__table__.c.source)).all()
    assert all(source.startswith("imap:INBOX:") for source in sources) and len(sources) == 3

    dovecot.deliver(mails[0])  # the same reply again, and a new one
    dovecot.deliver(reply(sent["ANNA"]["to_address"], "Card declined.", to=sent["ANNA"]))
    second = json.loads(CliRunner().invoke(app, ["inbox", "--json"]).stdout)

    assert second["read"] == 2 and second["already_filed"] == 1
    assert second["intents"]["payment_failed"] == 1
    assert len(dovecot.messages("Collectflow.Processed")) == 5 and not dovecot.messages("INBOX")
    with engine.connect() as conn:
        answers = conn.execute(select(func.count()).select_from(CustomerAnswer)).scalar_one()
    assert answers == 2


def test_a_wrong_imap_password_is_refused_with_the_reason(
    engine: Engine, dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTFLOW_IMAP_PASSWORD", "not-the-password")
    get_settings.cache_clear()

    result = CliRunner().invoke(app, ["inbox", "--json"])

    assert result.exit_code == 2
    assert "login refused" in " ".join(result.output.split())
    assert "not-the-password" not in result.output


def test_a_password_in_clear_is_refused_for_any_host_but_this_machine(
    settings: Settings,
) -> None:
    remote = settings.model_copy(
        update={
            "imap_host": "imap.example.com",
            "imap_user": "u",
            "imap_password": SecretStr("p"),
            "imap_security": "plain",
        }
    )

    with pytest.raises(ConfigError, match=r"in clear to imap\.example\.com"):
        ImapInbox(remote)
