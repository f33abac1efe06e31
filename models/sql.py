"""Portable SQL pieces that SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Integer, Select, String, Table, bindparam, insert, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement


class days_between(FunctionElement[int]):
    """Whole days from the second date to the first (`later - earlier`), as an integer."""

    type = Integer()
    inherit_cache = True
    name = "days_between"

    def __init__(self, later: ColumnElement[Any] | Any, earlier: ColumnElement[Any] | Any):
        super().__init__(later, earlier)


@compiles(days_between, "sqlite")
def _days_between_sqlite(element: days_between, compiler: Any, **kw: Any) -> str:
    later, earlier = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"CAST(julianday({later}) - julianday({earlier}) AS INTEGER)"


@compiles(days_between, "postgresql")
def _days_between_postgresql(element: days_between, compiler: Any, **kw: Any) -> str:
    later, earlier = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"(CAST({later} AS DATE) - CAST({earlier} AS DATE))"


def insert_ignoring_conflicts(
    dialect_name: str,
    table: Table,
    index_elements: list[str],
    columns: list[str],
    source: Select[Any],
) -> Any:
    """`INSERT INTO table (columns) SELECT ... ON CONFLICT (index_elements) DO NOTHING`.

    SQLite needs a WHERE in such a SELECT to parse the upsert clause, so one is always added.
    """
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return (
        dialect.insert(table)
        .from_select(columns, source.where(true()))
        .on_conflict_do_nothing(index_elements=index_elements)
    )


class json_object(FunctionElement[str]):
    """A JSON object text built in SQL from alternating key and value expressions."""

    inherit_cache = True
    name = "json_object"


@compiles(json_object, "sqlite")
def _json_object_sqlite(element: json_object, compiler: Any, **kw: Any) -> str:
    return f"json_object({compiler.process(element.clauses, **kw)})"


@compiles(json_object, "postgresql")
def _json_object_postgresql(element: json_object, compiler: Any, **kw: Any) -> str:
    return f"CAST(json_build_object({compiler.process(element.clauses, **kw)}) AS TEXT)"


class month_of(FunctionElement[str]):
    """`YYYY-MM` of a date, on either database."""

    type = String()
    inherit_cache = True
    name = "month_of"


@compiles(month_of, "sqlite")
def _month_of_sqlite(element: month_of, compiler: Any, **kw: Any) -> str:
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


@compiles(month_of, "postgresql")
def _month_of_postgresql(element: month_of, compiler: Any, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM')"


class in_ids(FunctionElement[bool]):
    """`column` is one of the ids given as the list parameter `name` (default "ids").

    PostgreSQL gets `column = ANY(:ids)`, one array parameter: the statement's text is the
    same whatever the list's length, so psycopg prepares it once, where each new length of
    an `IN (:a, :b, …)` list would be planned again (planning these cost more than running
    them). SQLite plans cheaply and gets that `IN` list (a `json_each` subquery, one
    parameter there too, was measured: the same per-id lookups, 0.002 ms a message faster
    on a claim and its record, not worth a second form).
    """

    inherit_cache = True  # untyped: a Boolean function would be compared `= 1` on SQLite
    name = "in_ids"

    def __init__(self, column: ColumnElement[Any], name: str = "ids"):
        super().__init__(column, bindparam(name, type_=postgresql.ARRAY(Integer())))


@compiles(in_ids, "sqlite")
def _in_ids_sqlite(element: in_ids, compiler: Any, **kw: Any) -> str:
    column, ids = element.clauses
    expanding = bindparam(ids.key, expanding=True)
    return f"{compiler.process(column, **kw)} IN {compiler.process(expanding, **kw)}"


@compiles(in_ids, "postgresql")
def _in_ids_postgresql(element: in_ids, compiler: Any, **kw: Any) -> str:
    column, ids = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"{column} = ANY({ids})"


def bulk_insert(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Many rows of plain values (str, float, int, None) into `table`, as fast as each
    database takes them: COPY on PostgreSQL (psycopg's `copy`, in the connection's own
    transaction), one executemany on SQLite. For values computed in Python by the hundred
    thousand (the risk scores), where an INSERT per thousand rows costs seconds on PostgreSQL."""
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
