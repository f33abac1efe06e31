"""The case event log. Every case transition is written here, set-based, by one function."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Select, insert, literal
from sqlalchemy.sql.expression import ColumnElement

from collectflow.models import CaseEvent

EVENTS = CaseEvent.__table__


def record_events(
    conn: Connection,
    cases: Select[Any],
    kind: str,
    on: date,
    detail: dict[str, Any] | None = None,
    actor: str = "system",
) -> int:
    """Log `kind` for every case that `cases` selects.

    `cases` selects the case id, and optionally a second column with a per-case JSON detail
    (see `json_detail`); otherwise `detail` is stored for all. Call it with the same WHERE as
    the UPDATE it documents, in the same transaction: the log and the change land together.
    """
    selected = cases.subquery()
    columns = list(selected.c)
    per_case_detail = columns[1] if len(columns) > 1 else None
    fixed_detail = json.dumps(detail, sort_keys=True, default=str) if detail else None
    source = selected.select().with_only_columns(
        columns[0],
        literal(datetime.now(UTC), EVENTS.c.at.type),
        literal(on, EVENTS.c.on.type),
        literal(kind),
        literal(actor),
        per_case_detail if per_case_detail is not None else literal(fixed_detail),
    )
    result = conn.execute(
        insert(EVENTS).from_select(["case_id", "at", "on", "kind", "actor", "detail"], source)
    )
    return result.rowcount


def json_detail(key: str, value: ColumnElement[Any]) -> ColumnElement[str]:
    """`{"key": "value"}` built in SQL, for identifiers such as stage names (no quoting needed)."""
    return literal(f'{{"{key}": "') + value + literal('"}')
