"""The database engine: SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlmodel import SQLModel

import collectflow.models.tables  # noqa: F401 - registers the tables on SQLModel.metadata


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
    """Bring the database to the current schema: create it, or migrate it.

    - An empty database: every table is created as the models describe it, and the schema
      is recorded at the latest revision (`alembic_version`).
    - A database made before migrations existed (tables, no `alembic_version`): the tables it
      lacks (added by a later version than the one that made it) are created, the schema is
      recorded at the baseline revision, then migrated.
    - Otherwise: the revisions it lacks are applied (Alembic, `models/migrations`).
    """
    with engine.begin() as conn:
        tables = set(inspect(conn).get_table_names())
        config = alembic_config(conn)
        if "alembic_version" in tables:
            command.upgrade(config, "head")
        elif tables & set(SQLModel.metadata.tables):
            SQLModel.metadata.create_all(conn)  # only the missing tables, as `init` always did
            command.stamp(config, BASELINE)
            command.upgrade(config, "head")
        else:
            SQLModel.metadata.create_all(conn)
            command.stamp(config, "head")


BASELINE = "0001"
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(conn: Connection) -> Config:
    """Alembic's configuration for migrating over `conn`, inside the caller's transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def drop_db(engine: Engine) -> None:
    """Drop every Collectflow table and the schema's revision (tests and `init --reset`)."""
    SQLModel.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
