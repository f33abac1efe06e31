"""Reading the inbox: every unread mail filed once, then the replies read with confidence
applied; what `collectflow inbox` and the hourly `inbox` deployment run.

Each batch is read (triage.py), filed in one transaction (filing.py) and only then marked
filed in the mailbox (moved: maildir_inbox.py, imap_inbox.py), so a crash loses no mail and
files none twice. The replies filed `pending` are applied last (replies.py), also those a
crashed run left pending.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from collectflow.flows.config import Settings
from collectflow.flows.errors import ConfigError
from collectflow.flows.feedback.answers import INTENTS
from collectflow.flows.feedback.autoreplies import AutoReplies
from collectflow.flows.feedback.classify import OTHER, Classifier
from collectflow.flows.feedback.filing import UNMATCHED, Filed, file_batch
from collectflow.flows.feedback.imap_inbox import ImapInbox
from collectflow.flows.feedback.mailboxes import Reader
from collectflow.flows.feedback.maildir_inbox import MaildirInbox
from collectflow.flows.feedback.replies import APPLIED, QUEUED, RECORDED, apply_pending
from collectflow.flows.feedback.triage import KINDS, triage
from collectflow.flows.policy.document import Policy, load_policy
from collectflow.models import init_db, make_engine

BATCH = 500


@dataclass
class InboxReport:
    """What a read of the inbox did; `to_dict` is `collectflow inbox --json`."""

    sources: list[str] = field(default_factory=list)
    read: int = 0
    filed: Filed = field(default_factory=Filed)
    replies: Counter[str] = field(default_factory=Counter)  # apply_pending's outcomes
    seconds: dict[str, float] = field(default_factory=dict)  # filing (read, file, move), applying

    def to_dict(self) -> dict[str, Any]:
        statuses = self.filed.statuses
        return {
            "sources": self.sources,
            "read": self.read,
            "already_filed": self.filed.already_filed,
            "kinds": {kind: self.filed.kinds[kind] for kind in KINDS},
            "intents": {intent: self.filed.intents[intent] for intent in (*INTENTS, OTHER)},
            "bounces": {"hard": self.filed.bounces["hard"], "soft": self.filed.bounces["soft"]},
            "applied": self.replies[APPLIED],
            "queued": statuses[QUEUED] + self.replies[QUEUED],
            "recorded": statuses[RECORDED] + self.replies[RECORDED],
            "unmatched": statuses[UNMATCHED],
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
        }


def readers_for(settings: Settings, maildir: Path | None = None) -> list[Reader]:
    """The inboxes to read: `maildir` when given; else the Maildir of `COLLECTFLOW_INBOX` and
    the IMAP folder of `COLLECTFLOW_IMAP_HOST`, each that is set. ConfigError when none is."""
    if maildir is not None:
        return [MaildirInbox(maildir)]
    readers: list[Reader] = []
    if settings.inbox is not None:
        readers.append(MaildirInbox(settings.inbox))
    if settings.imap_host:
        readers.append(ImapInbox(settings))
    if not readers:
        raise ConfigError(
            "no inbox to read: set COLLECTFLOW_INBOX to a Maildir, or COLLECTFLOW_IMAP_HOST "
            "(with _USER, _PASSWORD and optionally _FOLDER) for an IMAP mailbox, or pass --maildir"
        )
    return readers


def read_inbox(
    engine: Engine,
    policy: Policy,
    readers: list[Reader],
    today: date,
    now: datetime | None = None,
    batch: int = BATCH,
) -> InboxReport:
    """File every unread mail of `readers`, then apply the replies left pending."""
    report = InboxReport()
    started = time.perf_counter()
    automatic, classifier = AutoReplies(policy.replies), Classifier(policy.replies)
    for reader in readers:
        report.sources.append(reader.name)
        with reader:
            for fetched in reader.batches(batch):
                mails = [triage(mail.source, mail.raw, automatic) for mail in fetched]
                with engine.begin() as conn:
                    filed = file_batch(conn, mails, classifier, today, now or datetime.now(UTC))
                reader.done(fetched)
                report.read += len(fetched)
                report.filed.add(filed)
    report.seconds["filing"] = time.perf_counter() - started
    started = time.perf_counter()
    report.replies = apply_pending(engine, policy, today)
    report.seconds["applying"] = time.perf_counter() - started
    return report


def read_configured(settings: Settings, today: date, maildir: Path | None = None) -> InboxReport:
    """Read the inboxes the settings name (or `maildir`) into the configured database."""
    readers = readers_for(settings, maildir)
    policy = load_policy(settings.policy)
    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        return read_inbox(engine, policy, readers, today)
    finally:
        engine.dispose()
