"""Each stage's subject says what the message is, in the customer's language, and every
message of a case still carries the case reference and its thread headers.

Three customers (en, fr, de) never pay; their inboxes are read from the Maildir.
"""

from __future__ import annotations

import mailbox
from collections import defaultdict
from datetime import date, timedelta
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from sqlalchemy import Engine

from collectflow.flows.config import Settings
from collectflow.flows.pipeline import open_run, run_day
from tests.ledger import Ledger

DUE = date(2026, 3, 2)
SEVERITY = {  # what each stage's subject must start with, as a reader of that language expects
    "en": ["Payment due soon", "Payment reminder", "Overdue payment", "Final notice"],
    "fr": ["Échéance prochaine", "Rappel de paiement", "Retard de paiement", "Dernier avis"],
    "de": ["Zahlung bald fällig", "Zahlungserinnerung", "Zahlungsverzug", "Letzte Mahnung"],
}


def inboxes(settings: Settings) -> dict[str, list[EmailMessage]]:
    parse = BytesParser(policy=email_policy.default).parsebytes
    found: dict[str, list[EmailMessage]] = defaultdict(list)
    for message in mailbox.Maildir(settings.outbox):
        mail = parse(message.as_bytes())
        found[mail["To"].addresses[0].addr_spec].append(mail)
    for mails in found.values():
        # Date has whole seconds, so two days' mails can tie; a later one of the thread refers
        # to more earlier ones.
        mails.sort(key=lambda mail: (mail["Date"].datetime, len(str(mail["References"] or ""))))
    return found


def test_every_stage_has_its_own_subject_that_shows_its_severity(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ledger = Ledger()
    for language in SEVERITY:
        ledger.customer(language.upper(), locale=language)
        ledger.invoice(f"INV-{language}", language.upper(), DUE, number=f"N-{language}")
    ledger.load(engine, tmp_path / "ledger", settings)

    with open_run(settings) as ctx:
        for offset in range(-5, 50):
            run_day(ctx, DUE + timedelta(days=offset))

    mail = inboxes(settings)
    for language, heads in SEVERITY.items():
        received = mail[f"{language}@example.com"]
        subjects = [str(message["Subject"]) for message in received]
        assert len(subjects) == 4, subjects
        assert len(set(subjects)) == 4
        for subject, head in zip(subjects, heads, strict=True):
            assert subject.startswith(head), (subject, head)
            assert f"N-{language}" in subject
        references = {subject.rsplit("(", 1)[1] for subject in subjects}
        assert len(references) == 1  # "(ref. 1)": the same case reference at every stage
        first_id = received[0]["Message-ID"]
        assert all(first_id in str(message["References"]) for message in received[1:])
