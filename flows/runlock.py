"""One daily run per database at a time: the run lock.

Two runs of the same database at once would each rebuild the day's tables and plan the same
stages; the second one waits for the first (at most `COLLECTFLOW_RUN_LOCK_WAIT` seconds), then
gives up with `RunLocked`, naming who holds the lock. Operator actions and delivery don't take
it: they are made safe by their own row locks.

- PostgreSQL: a session advisory lock, keyed by the schema, held on a connection of its own
  for the whole run; the connection's `application_name` says who holds it, and a process
  that dies releases it with its connection.
- SQLite: an exclusive `flock` on `<database file>.run-lock` beside the database (the file
  stays; the lock does not), with the holder written in it; the operating system releases it
  when the process dies. An in-memory database is private to its process: nothing to lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, text

from collectflow.flows.config import Settings
from collectflow.flows.errors import RunLocked
from collectflow.models import make_engine

LOCK_CLASS = 0x636F6C6C  # "coll": the first key of the advisory lock, the schema's hash the second
POLL_SECONDS = 0.2


def holder_name(what: str) -> str:
    """Who a lock taken now by this process belongs to, as the other run will be told."""
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"collectflow {what} (pid {os.getpid()} on {socket.gethostname()}, since {since})"


@contextmanager
def run_lock(settings: Settings, what: str) -> Iterator[None]:
    """Hold the database's run lock while the block runs; RunLocked when another run keeps it
    longer than `settings.run_lock_wait` seconds."""
    engine = make_engine(settings.database_url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn, _advisory_lock(conn, holder_name(what), settings):
                yield
        else:
            database = engine.url.database
            if not database or database == ":memory:":
                yield
                return
            with _file_lock(Path(f"{database}.run-lock"), holder_name(what), settings):
                yield
    finally:
        engine.dispose()


@contextmanager
def _advisory_lock(conn: Connection, holder: str, settings: Settings) -> Iterator[None]:
    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    key = {"class": LOCK_CLASS, "schema": zlib.crc32(schema.encode()) & 0x7FFFFFFF}
    conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": holder})
    acquire = text("SELECT pg_try_advisory_lock(:class, :schema)")
    _wait(lambda: conn.execute(acquire, key).scalar_one(), lambda: _pg_holder(conn, key), settings)
    try:
        yield
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:class, :schema)"), key)


def _pg_holder(conn: Connection, key: dict[str, int]) -> str:
    """The application name of the session holding the advisory lock."""
    holder = conn.execute(
        text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :class "
            "AND l.objid = :schema AND l.objsubid = 2 AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        key,
    ).scalar()
    return holder or "another session (it has just let go)"


@contextmanager
def _file_lock(path: Path, holder: str, settings: Settings) -> Iterator[None]:
    with path.open("a+", encoding="utf-8") as handle:

        def acquire() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        def current() -> str:
            handle.seek(0)
            return handle.read().strip() or "another process (it has just let go)"

        _wait(acquire, current, settings)
        handle.seek(0)
        handle.truncate()
        handle.write(holder)
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait(acquire: Callable[[], bool], holder: Callable[[], str], settings: Settings) -> None:
    """Try to take the lock until `settings.run_lock_wait` seconds have passed."""
    deadline = time.monotonic() + settings.run_lock_wait
    while not acquire():
        if time.monotonic() >= deadline:
            raise RunLocked(holder(), settings.run_lock_wait)
        time.sleep(POLL_SECONDS)
