"""The case lifecycle: every move the table allows is made, every other one is refused with
the case, both states named, and nothing changed."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import Engine, func, insert, select, update

from collectflow.flows.cases.lifecycle import (
    ACTIVE,
    ALLOWED,
    CLOSED,
    PAUSED_STATES,
    STATES,
    transition,
    transition_case,
)
from collectflow.flows.errors import TransitionRefused, UnknownCase
from collectflow.models import Case, CaseEvent, Customer

CASES = Case.__table__
EVENTS = CaseEvent.__table__
TODAY = date(2026, 5, 4)


@pytest.fixture
def case_id(engine: Engine) -> int:
    with engine.begin() as conn:
        conn.execute(insert(Customer.__table__).values(customer_id="C1", name="C", email="c@x.io"))
        return conn.execute(
            insert(CASES)
            .values(customer_id="C1", segment="new", ladder="standard", opened_on=TODAY)
            .returning(CASES.c.id)
        ).scalar_one()


def events(engine: Engine, case_id: int) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(EVENTS.c.kind, EVENTS.c.actor, EVENTS.c.detail)
            .where(EVENTS.c.case_id == case_id)
            .order_by(EVENTS.c.id)
        )
        return [tuple(row) for row in rows]


def test_the_states_and_their_groups() -> None:
    assert {"open", "reminding"} == ACTIVE
    assert {"promised", "disputed", "paused"} == PAUSED_STATES
    assert {"resolved", "written_off"} == CLOSED
    assert set(ALLOWED) == STATES
    assert all(not ALLOWED[state] for state in CLOSED), "a closed case never moves again"
    assert all("resolved" in ALLOWED[state] for state in STATES - CLOSED), (
        "a case closes by itself from any open state once nothing is owed"
    )


def test_every_allowed_move_is_made_and_logged_and_every_other_is_refused(
    engine: Engine, case_id: int
) -> None:
    made = refused = 0
    for current in sorted(STATES):
        for target in sorted(STATES):
            with engine.begin() as conn:
                conn.execute(update(CASES).values(status=current))
            try:
                with engine.begin() as conn:
                    left = transition_case(
                        conn, case_id, target, TODAY, "moved", actor="ana", why="test"
                    )
            except TransitionRefused as exc:
                assert target not in ALLOWED[current], f"{current} -> {target} was refused"
                assert str(exc).startswith(
                    f"case {case_id}: cannot go from {current!r} to {target!r}"
                )
                refused += 1
                continue
            assert target in ALLOWED[current], f"{current} -> {target} was allowed"
            assert left == current
            made += 1
            with engine.connect() as conn:
                assert conn.execute(select(CASES.c.status)).scalar_one() == target
            kind, actor, detail = events(engine, case_id)[-1]
            assert (kind, actor) == ("moved", "ana")
            assert f'"from": "{current}"' in detail and f'"to": "{target}"' in detail
    assert made == sum(len(to) for to in ALLOWED.values())
    assert refused == len(STATES) ** 2 - made
    assert len(events(engine, case_id)) == made, "a refused move writes no event"


def test_a_refused_move_names_what_is_possible_and_changes_nothing(
    engine: Engine, case_id: int
) -> None:
    with engine.begin() as conn:
        conn.execute(update(CASES).values(status="resolved"))
    with pytest.raises(TransitionRefused) as refused, engine.begin() as conn:
        transition_case(conn, case_id, "promised", TODAY, "promise_recorded", actor="ana")
    assert str(refused.value) == (
        f"case {case_id}: cannot go from 'resolved' to 'promised' (from 'resolved' it may go "
        "to: none: the case is closed)"
    )
    assert events(engine, case_id) == []


def test_an_unknown_case_is_named(engine: Engine, case_id: int) -> None:
    with pytest.raises(UnknownCase, match="no case with id 999"), engine.begin() as conn:
        transition_case(conn, 999, "resolved", TODAY, "closed", actor="ana")


def test_a_set_based_move_refuses_the_whole_set_if_one_case_may_not_move(
    engine: Engine, case_id: int
) -> None:
    with engine.begin() as conn:
        conn.execute(update(CASES).values(status="written_off"))
    refused = pytest.raises(TransitionRefused, match="'written_off' to 'escalated'")
    with refused, engine.begin() as conn:
        transition(conn, select(CASES.c.id), "escalated", TODAY, "escalated")
    with engine.connect() as conn:
        assert conn.execute(select(CASES.c.status)).scalar_one() == "written_off"
        assert conn.execute(select(func.count()).select_from(EVENTS)).scalar_one() == 0
