"""Alembic's entry point: migrate the connection `init_db` hands over, or, when a developer
runs `alembic` from the project folder, the database of COLLECTFLOW_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import collectflow.models.tables  # noqa: F401 - registers the tables on SQLModel.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    from collectflow.flows.config import get_settings
    from collectflow.models.db import make_engine

    engine = make_engine(get_settings().database_url)
    try:
        with engine.begin() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


def _migrate(connection: object) -> None:
    # batch mode: SQLite can't ALTER most things, so Alembic rebuilds the table there
    context.configure(
        connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


run()
