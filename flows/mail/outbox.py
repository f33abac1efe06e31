"""The outbox state machine: every status move of a message goes through `move`, which logs it.

    planned ──claim──► sending ──► sent | failed | bounced | planned (retry later)
       │                  │
       └──► suppressed    └──reply lost / worker gone──► unknown ──operator──► sent | planned

A message is `sending` while a worker holds its claim (`claimed_by`, `lease_until`). A worker
that dies leaves it there; once its process is known gone or the lease has expired, the
message is moved to `unknown` (in doubt: it may or may not have reached the server) and
reported, never resent by itself. So is one whose server reply was lost after the end of DATA.
An operator then confirms it sent or asks for it to be sent again (`resolve_in_doubt`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Select,
    String,
    Update,
    bindparam,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.errors import NotInDoubt
from collectflow.models import (
    PLANNED_MESSAGE_COLUMNS,
    Message,
    MessageEvent,
    in_ids,
    insert_ignoring_conflicts,
)

MESSAGES = Message.__table__
EVENTS = MessageEvent.__table__
EVENT_COLUMNS = ["message_id", "at", "from_status", "to_status", "reason", "worker"]

PLANNED = "planned"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
BOUNCED = "bounced"
SUPPRESSED = "suppressed"
IN_DOUBT = "unknown"


def plan_messages(conn: Connection, source: Select[Any], extra: Sequence[str] = ()) -> int:
    """Enter the messages `source` selects into the outbox as `planned`; returns how many.

    The one way a message is born: `source` yields the `PLANNED_MESSAGE_COLUMNS` in order
    (then the `extra` columns), and a key already in the outbox is skipped, so planning the
    same stage, apology or campaign twice plans it once.
    """
    columns = [*PLANNED_MESSAGE_COLUMNS, *extra]
    statement = insert_ignoring_conflicts(conn.dialect.name, MESSAGES, ["key"], columns, source)
    return conn.execute(statement).rowcount


def move(
    conn: Connection,
    where: ColumnElement[bool],
    from_status: str,
    to_status: str,
    reason: str | ColumnElement[str] | None,
    at: datetime,
    worker: str | None = None,
    **values: Any,
) -> list[int]:
    """Move the messages that `where` selects and that are `from_status` to `to_status`.

    Guarded by the current status, so of two workers racing for a message only one moves it.
    Each move is logged in `message_events` in the same transaction. Returns the moved ids.
    """
    statement = move_statement(where, from_status, to_status, reason, **values)
    return [mid for mid, _ in run_move(conn, statement, {}, from_status, to_status, at, worker)]


def move_statement(
    where: ColumnElement[bool],
    from_status: str,
    to_status: str,
    reason: str | ColumnElement[str] | None,
    **values: Any,
) -> Update:
    """The UPDATE of `move`, to build once and run many times with `run_move` (its bind
    parameters, e.g. the batch's ids of `models.in_ids`, are given at each run)."""
    reason_value = reason if isinstance(reason, ColumnElement) else literal(reason, String)
    return (
        update(MESSAGES)
        .where(where, MESSAGES.c.status == from_status)
        .values(status=to_status, status_reason=reason_value, **values)
        .returning(MESSAGES.c.id, MESSAGES.c.status_reason)
    )


def run_move(
    conn: Connection,
    statement: Update,
    params: dict[str, Any],
    from_status: str,
    to_status: str,
    at: datetime,
    worker: str | None,
) -> list[tuple[int, str | None]]:
    """Run a `move_statement` built for `from_status` → `to_status` and log each move in the
    same transaction. Returns the moved (id, reason) pairs."""
    if conn.dialect.name == "postgresql":  # the UPDATE and its log in one statement
        logged = _logged(statement, from_status, to_status)
        run = conn.execute(logged, params | {"log_at": at, "log_worker": worker})
        return [(mid, why) for mid, why in run]
    moved = [(mid, why) for mid, why in conn.execute(statement, params)]
    if moved:  # the log copies the moved rows, set-based: no per-row parameters
        conn.execute(
            _LOG_COPY,
            {
                "ids": [mid for mid, _ in moved],
                "log_at": at,
                "log_from": from_status,
                "log_to": to_status,
                "log_worker": worker,
            },
        )
    return moved


@functools.lru_cache(maxsize=32)
def _logged(statement: Update, from_status: str, to_status: str) -> Insert:
    """PostgreSQL: `WITH moved AS (the UPDATE … RETURNING) INSERT INTO message_events SELECT
    … FROM moved RETURNING …`, one round trip instead of two; same rows, same transaction."""
    moved = statement.cte("moved")
    rows = select(
        moved.c.id,
        bindparam("log_at", type_=EVENTS.c.at.type),
        literal(from_status, String),
        literal(to_status, String),
        moved.c.status_reason,
        bindparam("log_worker", type_=String),
    )
    return (
        insert(EVENTS)
        .from_select(EVENT_COLUMNS, rows)
        .add_cte(moved, nest_here=True)
        .returning(EVENTS.c.message_id, EVENTS.c.reason)
    )


_LOG_MOVE = insert(EVENTS)
# SQLite: the log of a move just made, copied from the moved rows (reason included)
_LOG_COPY = insert(EVENTS).from_select(
    EVENT_COLUMNS,
    select(
        MESSAGES.c.id,
        bindparam("log_at", type_=EVENTS.c.at.type),
        bindparam("log_from", type_=String),
        bindparam("log_to", type_=String),
        MESSAGES.c.status_reason,
        bindparam("log_worker", type_=String),
    ).where(in_ids(MESSAGES.c.id)),
)


def log_moves(
    conn: Connection,
    moves: Sequence[tuple[int, str, str, str | None]],
    at: datetime,
    worker: str | None,
) -> None:
    """Write (message id, from, to, reason) moves to the log, in one statement."""
    if moves:
        conn.execute(
            _LOG_MOVE,
            [
                {
                    "message_id": mid,
                    "at": at,
                    "from_status": old,
                    "to_status": new,
                    "reason": why,
                    "worker": worker,
                }
                for mid, old, new, why in moves
            ],
        )


def take_write_lock(conn: Connection) -> None:
    """On SQLite, take the database's write lock now: claims happen one writer at a time.

    A plain (deferred) transaction that reads first and writes later fails with 'database is
    locked' when another writer committed in between; BEGIN IMMEDIATE waits its turn instead.
    PostgreSQL needs nothing: claims lock rows with FOR UPDATE SKIP LOCKED.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def in_doubt(conn: Connection) -> list[dict[str, Any]]:
    """The messages in doubt, oldest first, with who was sending them and why they are here."""
    rows = conn.execute(
        select(
            MESSAGES.c.id,
            MESSAGES.c.case_id,
            MESSAGES.c.customer_id,
            MESSAGES.c.to_address,
            MESSAGES.c.stage,
            MESSAGES.c.planned_on,
            MESSAGES.c.claimed_by,
            MESSAGES.c.status_reason,
            MESSAGES.c.message_id_header,
        )
        .where(MESSAGES.c.status == IN_DOUBT)
        .order_by(MESSAGES.c.id)
    ).mappings()
    return [dict(row) for row in rows]


def resolve_in_doubt(
    engine: Engine, ids: Sequence[int], sent: bool, on: date, actor: str
) -> list[int]:
    """An operator's verdict on messages in doubt: they did arrive (`sent`), or send again.

    The operator checks the mail server's log or the customer's mailbox for the message's
    Message-ID (shown by `collectflow in-doubt`). Raises NotInDoubt naming any id that is not
    in doubt, and then changes nothing.
    """
    now = datetime.now(UTC)
    with engine.begin() as conn:
        take_write_lock(conn)
        chosen = MESSAGES.c.id.in_(list(ids))
        doubtful = select(MESSAGES.c.id).where(chosen, MESSAGES.c.status == IN_DOUBT)
        found = set(conn.scalars(doubtful))
        missing = sorted(set(ids) - found)
        if missing:
            raise NotInDoubt(
                f"message(s) {', '.join(map(str, missing))} not in doubt; "
                "`collectflow in-doubt` lists the ones that are"
            )
        if sent:
            return move(conn, chosen, IN_DOUBT, SENT, f"confirmed sent by {actor}", now, actor,
                        sent_on=on, sent_at=now, lease_until=None)  # fmt: skip
        return move(conn, chosen, IN_DOUBT, PLANNED, f"resend asked by {actor}", now, actor,
                    claimed_by=None, lease_until=None, next_attempt_at=None)  # fmt: skip
