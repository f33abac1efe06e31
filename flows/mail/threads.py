"""Threading: each later stage of a case replies to the case's reminders sent so far.

A reminder's email carries `In-Reply-To` (the case's latest sent reminder) and `References`
(all of them, oldest first; RFC 5322 3.6.4), so a mail client shows the stages as one
conversation. The claim reads whether a message's case has any (`has_thread`: most first
reminders have none), `earlier_message_ids` then reads them for those cases only, and
`mail.compose` writes the headers.
"""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.sql.expression import Exists

from collectflow.flows.mail.outbox import SENT
from collectflow.models import Message, in_ids

MESSAGES = Message.__table__

_THREADS = (
    select(MESSAGES.c.case_id, MESSAGES.c.message_id_header)
    .where(
        in_ids(MESSAGES.c.case_id, "cases"),
        MESSAGES.c.kind == "reminder",
        MESSAGES.c.status == SENT,
        MESSAGES.c.message_id_header.is_not(None),
    )
    .order_by(MESSAGES.c.sent_at, MESSAGES.c.id)
)


def has_thread() -> Exists:
    """Whether the (correlated) message's case has sent reminders with a Message-ID."""
    earlier = MESSAGES.alias("earlier")
    return (
        select(earlier.c.id)
        .where(
            earlier.c.case_id == MESSAGES.c.case_id,
            earlier.c.kind == "reminder",
            earlier.c.status == SENT,
            earlier.c.message_id_header.is_not(None),
        )
        .exists()
    )


def earlier_message_ids(conn: Connection, case_ids: set[int]) -> dict[int, list[str]]:
    """Per case, the Message-IDs of its reminders sent so far, oldest first: what a later
    stage replies to (the latest) and references (all), so they show as one conversation.
    Asked only for the cases the claim found with a sent reminder (`has_thread`)."""
    if not case_ids:
        return {}
    threads: dict[int, list[str]] = {}
    for case_id, message_id_header in conn.execute(_THREADS, {"cases": list(case_ids)}):
        threads.setdefault(case_id, []).append(message_id_header)
    return threads
