"""Every customer message carries a short signed link to its answer page, and its one-click
opt-out in List-Unsubscribe (RFC 8058); without a link secret or a public URL nothing starts.

The session's settings (tests/conftest.py) sign with TEST_LINK_SECRET under TEST_PUBLIC_URL.
"""

from __future__ import annotations

import json
import mailbox
import os
import stat
from collections.abc import Iterator
from datetime import date, timedelta
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from collectflow.flows.campaign import campaign
from collectflow.flows.cli.app import app
from collectflow.flows.config import Settings, get_settings
from collectflow.flows.errors import ConfigError, TemplateError
from collectflow.flows.feedback.links import BadLink, LinkClaims, LinkSigner
from collectflow.flows.feedback.message_links import message_links
from collectflow.flows.ledger.demo import DEMO_SECRET_FILE
from collectflow.flows.pipeline import open_run, run_day
from collectflow.flows.policy import Policy, Sender, load_policy
from collectflow.flows.steps import deliver_due, render_planned
from collectflow.flows.steps.render import TemplateCatalog, build_context, load_catalog
from collectflow.models import Message, MessageContent
from tests.conftest import TEST_LINK_SECRET, TEST_PUBLIC_URL
from tests.ledger import Ledger, two_overdue_customers
from tests.outbox import with_bodies
from tests.smtp_server import SmtpServer
from tests.test_render import TEMPLATES, add_customer, add_invoice, add_message, open_case

MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
TODAY = date(2026, 6, 15)
EXPIRY_DAYS = 60  # the shipped policy's feedback.link_expiry_days
NEW_KEY = "a-newer-link-secret-fedcba9876543210"


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email_policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def answer_url(text: str, base: str = TEST_PUBLIC_URL) -> str:
    """The one line of the text part that is the answer link, a bare URL."""
    [line] = [line for line in text.splitlines() if line.startswith(f"{base}/r/")]
    return line


def token_of(url: str) -> str:
    return url.rsplit("/r/", 1)[1].removesuffix("/unsubscribe")


def rows_by_message_id(engine: Engine) -> dict[str, object]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.customer_id, MESSAGES.c.planned_on,
                   MESSAGES.c.message_id_header)
        ).all()  # fmt: skip
    return {row.message_id_header: row for row in rows}


@pytest.fixture
def smtp(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        yield server


def test_each_message_links_to_its_own_page_and_unsubscribes_in_one_click_as_received(
    engine: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    two_overdue_customers(engine, get_settings(), tmp_path, TODAY)

    received = [parse(envelope.content) for envelope in smtp.envelopes]
    assert len(received) == 6  # ANNA and BERT: pre-due, gentle, firm
    rows = rows_by_message_id(engine)
    signer = LinkSigner([TEST_LINK_SECRET])
    for email in received:
        row = rows[email["Message-ID"]]
        url = answer_url(email.get_body(("plain",)).get_content())
        claims = signer.verify(token_of(url), row.planned_on)
        assert claims == LinkClaims(
            row.id, row.customer_id, row.planned_on + timedelta(days=EXPIRY_DAYS)
        )
        assert f'href="{url}"' in email.get_body(("html",)).get_content()
        assert email["List-Unsubscribe"] == (
            f"<mailto:unsubscribe@example.com?subject=unsubscribe-{row.customer_id}>, "
            f"<{url}/unsubscribe>"
        )
        assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    tokens = {token_of(answer_url(email.get_body(("plain",)).get_content())) for email in received}
    assert len(tokens) == 6  # one link per message


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_after_a_key_rotation_old_links_still_verify_and_new_ones_use_the_new_key(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Rendered with the old key, delivered after the new one was put first: the body keeps
    its link, the header's one-click URL carries the same claims signed with the new key."""
    ledger = Ledger()
    ledger.customer("ANNA")
    ledger.invoice("INV-ANNA", "ANNA", TODAY - timedelta(days=3))
    ledger.load(engine, tmp_path / "ledger", settings)
    with open_run(settings) as ctx:
        run_day(ctx, TODAY, skip_delivery=True)
    monkeypatch.setenv("COLLECTFLOW_LINK_SECRET", f"{NEW_KEY}, {TEST_LINK_SECRET}")
    get_settings.cache_clear()
    rotated = get_settings()

    deliver_due(engine, rotated, TODAY, load_policy(rotated.policy).contact)

    [email] = [parse(message.as_bytes()) for message in mailbox.Maildir(rotated.outbox)]
    body_token = token_of(answer_url(email.get_body(("plain",)).get_content()))
    header_token = token_of(email["List-Unsubscribe"].split("<")[-1].rstrip(">"))
    assert body_token != header_token
    both = message_links(rotated).signer
    assert both.verify(body_token, TODAY) == both.verify(header_token, TODAY)
    assert LinkSigner([NEW_KEY]).verify(header_token, TODAY).customer_id == "ANNA"
    with pytest.raises(BadLink):
        LinkSigner([NEW_KEY]).verify(body_token, TODAY)  # the old key retired: old links die
    with pytest.raises(BadLink):
        LinkSigner([TEST_LINK_SECRET]).verify(header_token, TODAY)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_internal_mail_gets_no_answer_link_and_customer_mail_needs_one(
    engine: Engine, policy: Policy
) -> None:
    with engine.begin() as conn:
        add_customer(conn, "C-FR", "Boulangerie Dupont", "fr")
        add_invoice(conn, "INV-1", "C-FR", TODAY - timedelta(days=30), "120")
        case = open_case(conn, "C-FR")
        owed = [("INV-1", "120", "EUR")]
        firm = add_message(conn, case, "C-FR", "firm", owed, locale="fr")
        internal = add_message(conn, case, "C-FR", "escalation", owed, kind="internal")
        render_planned(
            conn,
            load_catalog(TEMPLATES, policy),
            policy,
            TODAY,
            links=message_links(get_settings()),
        )
        expiries = dict(
            conn.execute(select(CONTENTS.c.message_id, CONTENTS.c.link_expires_on)).all()
        )
        bodies = {row.id: row for row in with_bodies(conn)}

    assert expiries == {firm: TODAY + timedelta(days=EXPIRY_DAYS), internal: None}
    assert answer_url(bodies[firm].body_text)
    assert "/r/" not in bodies[internal].body_text + bodies[internal].body_html
    customer_context = build_context(
        {"stage": "gentle", "case_id": case}, [], {"customer_id": "C-FR", "name": "X",
        "email": "x@example.com"}, Sender(), TODAY, "fr",
    )  # fmt: skip
    with pytest.raises(TemplateError, match="answer_url"):  # never a message without its link
        TemplateCatalog(TEMPLATES, {"gentle"}).render("gentle", "fr", customer_context)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("unset", "value", "error"),
    [
        ("COLLECTFLOW_LINK_SECRET", None, "COLLECTFLOW_LINK_SECRET is not set"),
        ("COLLECTFLOW_PUBLIC_URL", None, "COLLECTFLOW_PUBLIC_URL is not set"),
        ("COLLECTFLOW_PUBLIC_URL", "ftp://answers.example.com", "COLLECTFLOW_PUBLIC_URL "
         "'ftp://answers.example.com' is not a base URL"),
        ("COLLECTFLOW_LINK_SECRET", "short", "COLLECTFLOW_LINK_SECRET: key 1 is shorter than 16"),
    ],
)  # fmt: skip
def test_a_production_run_without_a_link_secret_or_public_url_stops_at_startup(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    unset: str,
    value: str | None,
    error: str,
) -> None:
    ledger = Ledger()
    ledger.customer("ANNA")
    ledger.invoice("INV-ANNA", "ANNA", TODAY - timedelta(days=3))
    ledger.load(engine, tmp_path / "ledger", settings)
    with open_run(settings) as ctx:  # planned and rendered while configured
        run_day(ctx, TODAY, skip_delivery=True)
    if value is None:
        monkeypatch.delenv(unset)
    else:
        monkeypatch.setenv(unset, value)
    get_settings.cache_clear()
    runner = CliRunner()

    for command in (["run", "--as-of", str(TODAY)], ["deliver", "--as-of", str(TODAY)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.stderr)
        assert error in result.stderr
    if value is None:  # a campaign is a flow run of its own: once per missing setting
        with pytest.raises(ConfigError, match=error):
            campaign("summer", "firm", as_of=TODAY, dry_run=False)
    with engine.connect() as conn:
        assert conn.execute(select(MESSAGES.c.status)).scalars().all() == ["planned"]
    assert not settings.outbox.exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_demo_signs_with_a_key_of_its_own_kept_beside_its_outbox(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLLECTFLOW_LINK_SECRET")
    monkeypatch.delenv("COLLECTFLOW_PUBLIC_URL")
    get_settings.cache_clear()
    runner = CliRunner()

    result = runner.invoke(app, ["demo", "--customers", "12", "--days", "4", "--json"])

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["sent"] > 0
    secret_file = settings.outbox.parent / DEMO_SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    key = secret_file.read_text(encoding="ascii").strip()
    assert len(key) >= 32
    emails = [parse(message.as_bytes()) for message in mailbox.Maildir(settings.outbox)]
    reminders = [email for email in emails if "List-Unsubscribe" in email]
    assert reminders
    for email in reminders:
        url = answer_url(email.get_body(("plain",)).get_content(), "http://127.0.0.1:8080")
        assert LinkSigner([key]).verify(token_of(url), date.today())
        # the local page is http: RFC 8058 allows only https, so the mailto alone
        assert (
            email["List-Unsubscribe"].startswith("<mailto:")
            and "http" not in email["List-Unsubscribe"]
        )
        assert email["List-Unsubscribe-Post"] is None

    for name in ("COLLECTFLOW_LINK_SECRET", "COLLECTFLOW_PUBLIC_URL"):  # as on the next demo
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    again = runner.invoke(app, ["demo", "--customers", "12", "--days", "4", "--json"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["totals"]["sent"] == 0
    assert os.environ["COLLECTFLOW_LINK_SECRET"] == key  # the same key, read back
