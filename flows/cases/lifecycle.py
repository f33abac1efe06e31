"""The life of a collection case: its states, the moves allowed between them, and the one
function that makes a move and writes it to the event log.

A case is `open` when created, `reminding` once its first stage is planned, and `escalated`
after its ladder and grace period are done. Three states pause its reminders: `promised` (a
promise to pay, until the promised date plus grace), `disputed` (until an operator resolves the
dispute) and `paused` (an operator paused the customer until a date). A pause remembers where
the case was (`resume_status`), so resuming continues the ladder without repeating a stage.
A case ends `resolved` (nothing owed, or closed by an operator) or `written_off`.

Transitions are data (`ALLOWED`); `transition` applies one to many cases set-based (the daily
run) and `transition_case` to one case (an operator action). A move the table does not allow
is refused with `TransitionRefused`, naming the case and both states, and changes nothing.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from sqlalchemy import Connection, Select, literal, select, update
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.cases.events import record_events
from collectflow.flows.cases.queue import bring_back, resolve_open_items, set_aside
from collectflow.flows.errors import (
    ConcurrentChange,
    TransitionRefused,
    UnknownCase,
)
from collectflow.models import Case

CASES = Case.__table__

OPEN = "open"
REMINDING = "reminding"
PROMISED = "promised"
DISPUTED = "disputed"
PAUSED = "paused"
ESCALATED = "escalated"
RESOLVED = "resolved"
WRITTEN_OFF = "written_off"

ACTIVE = frozenset({OPEN, REMINDING})
"""States in which the ladder runs: plan may plan the next stage."""
PAUSED_STATES = frozenset({PROMISED, DISPUTED, PAUSED})
"""States in which no reminder may go out (delivery re-checks this before sending)."""
CLOSED = frozenset({RESOLVED, WRITTEN_OFF})
"""Final states; a closed case has `closed_on` set."""
STATES = ACTIVE | PAUSED_STATES | {ESCALATED} | CLOSED

ALLOWED: dict[str, frozenset[str]] = {
    OPEN: frozenset({REMINDING, PROMISED, DISPUTED, PAUSED, ESCALATED, RESOLVED}),
    REMINDING: frozenset({PROMISED, DISPUTED, PAUSED, ESCALATED, RESOLVED}),
    PROMISED: frozenset({OPEN, REMINDING, ESCALATED, DISPUTED, RESOLVED}),
    DISPUTED: frozenset({OPEN, REMINDING, ESCALATED, RESOLVED}),
    PAUSED: frozenset({OPEN, REMINDING, ESCALATED, PROMISED, DISPUTED, RESOLVED}),
    ESCALATED: frozenset({PROMISED, DISPUTED, PAUSED, RESOLVED, WRITTEN_OFF}),
    RESOLVED: frozenset(),
    WRITTEN_OFF: frozenset(),
}
"""From each state, the states a case may move to. Closed states have no way out."""

SET_ASIDE_WHILE_PAUSED = ("escalated", "write_off")
"""Queue reasons that wait while a case is paused: the customer promised, disputes or was
paused, so nobody should chase the escalation until the pause ends."""


def allowed_from(target: str) -> frozenset[str]:
    """The states from which a case may move to `target`."""
    if target not in STATES:
        raise ValueError(f"{target!r} is not a case state ({', '.join(sorted(STATES))})")
    return frozenset(state for state, to in ALLOWED.items() if target in to)


def transition(
    conn: Connection,
    cases: Select[Any],
    target: str,
    on: date,
    event: str,
    *,
    actor: str = "system",
    why: str | None = None,
    data: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> int:
    """Move every case that `cases` selects (a select of case ids) to `target`, set-based.

    Every case moved gets an `event` in its log with `from`, `to`, `why` and `data`; `values`
    are further columns set in the same UPDATE (e.g. `closed_on`). A selected case whose state
    does not allow the move raises TransitionRefused and the caller's transaction should be
    rolled back; daily-run callers select only cases in an allowed state, so this is a guard.
    """
    sources = allowed_from(target)
    selected = CASES.c.id.in_(cases.correlate(None).scalar_subquery())
    refused = conn.execute(
        select(CASES.c.id, CASES.c.status).where(selected, CASES.c.status.not_in(sources)).limit(1)
    ).first()
    if refused is not None:
        raise TransitionRefused(refused.id, refused.status, target, ALLOWED[refused.status])
    rest = json.dumps({"to": target, "why": why, **(data or {})}, sort_keys=True, default=str)
    detail = literal('{"from": "') + CASES.c.status + literal('", ' + rest[1:])
    record_events(conn, select(CASES.c.id, detail).where(selected), event, on, actor=actor)
    follow_in_queue(conn, selected, target, on)
    return conn.execute(
        update(CASES).where(selected).values(status=target, **(values or {}))
    ).rowcount


def follow_in_queue(conn: Connection, selected: ColumnElement[bool], target: str, on: date) -> None:
    """Make the selected cases' queue items match the state they move to, before they move.

    Closed: every open item is resolved (nothing is left to do on a closed case). Paused
    (promised, disputed, paused): the `escalated` and `write_off` items are set aside, resolved
    today with the state as their detail, so the queue shows only what needs a person now (a
    dispute's own item stays). Escalated again: those set-aside items come back, unclaimed and
    dated today.
    """
    cases = select(CASES.c.id).where(selected)
    if target in CLOSED:
        resolve_open_items(conn, cases, on)
    elif target in PAUSED_STATES:
        set_aside(conn, cases, SET_ASIDE_WHILE_PAUSED, target, on)
    elif target == ESCALATED:
        bring_back(conn, cases, SET_ASIDE_WHILE_PAUSED, on)


def transition_case(
    conn: Connection,
    case_id: int,
    target: str,
    on: date,
    event: str,
    *,
    actor: str,
    why: str | None = None,
    data: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> str:
    """Move one case to `target` for an operator action; returns the state it left.

    Refuses an unknown case or a move the lifecycle does not allow. The UPDATE is guarded by
    the state read, so a case changed meanwhile by someone else raises ConcurrentChange
    instead of being moved from a state nobody saw.
    """
    current = case_status(conn, case_id)
    if target not in ALLOWED[current]:
        raise TransitionRefused(case_id, current, target, ALLOWED[current])
    guarded = select(CASES.c.id).where(CASES.c.id == case_id, CASES.c.status == current)
    moved = transition(
        conn, guarded, target, on, event, actor=actor, why=why, data=data, values=values
    )
    if moved != 1:
        raise ConcurrentChange(f"case {case_id} changed while being updated; try again")
    return current


def case_status(conn: Connection, case_id: int) -> str:
    """The current state of a case; UnknownCase if there is none with that id."""
    status = conn.execute(select(CASES.c.status).where(CASES.c.id == case_id)).scalar()
    if status is None:
        raise UnknownCase(case_id)
    return status
