"""The database engine: SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlmodel import SQLModel

import models.tables  # noqa: F401 - registers the tables on SQLModel.metadata


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout.

    `preserve_rowcount`: the steps report how many rows an INSERT ... SELECT wrote, and without
    it SQLAlchemy 2.1 with psycopg gives -1 for those on PostgreSQL (SQLite was always right).
    """
    kwargs.setdefault("execution_options", {}).setdefault("preserve_rowcount", True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def init_db(engine: Engine) -> None:
    """Create every table and index that does not exist yet.

    `create_all` skips a table that exists, indexes included; an index added in a later
    release is created here on its own, so an existing database gets it too. (A new column
    would need a migration.)
    """
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def drop_db(engine: Engine) -> None:
    """Drop every Collectflow table (tests and `init --reset`)."""
    SQLModel.metadata.drop_all(engine)
