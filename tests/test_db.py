"""The database layer: migrations (`init_db` on new and older databases, the revisions
against the models), and `in_ids`, the one-parameter id list of a delivery's claims."""

from __future__ import annotations

from datetime import date

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, insert, inspect, select, text
from sqlmodel import SQLModel

from collectflow.flows.mail import mime_body, mime_parts
from collectflow.models import Case, Customer, Message, MessageContent, drop_db, in_ids, init_db
from collectflow.models.db import BASELINE, MIGRATIONS, alembic_config

MESSAGES = Message.__table__


def test_a_database_made_before_migrations_is_brought_to_the_latest_revision(
    engine: Engine,
) -> None:
    # as `create_all` made it before migrations existed (the baseline's schema), by a version
    # older still: no version table, a table added since missing, and a rendered message
    drop_db(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("DROP TABLE escalation_steps")
        _rendered_before_contents(conn)

    init_db(engine)
    init_db(engine)  # and again: nothing left to do, no error

    assert "ix_messages_status_id" in _indexes(engine)
    assert "escalation_steps" in inspect(engine).get_table_names()
    assert _revision(engine) == _head()
    _assert_bodies_moved(engine)


def test_a_message_rendered_before_contents_keeps_its_bodies(engine: Engine) -> None:
    """Revision 0003 moves the bodies out of `messages`; delivery builds their MIME body."""
    drop_db(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        _rendered_before_contents(conn)

    init_db(engine)

    _assert_bodies_moved(engine)
    with engine.begin() as conn:  # and back: the bodies return to the messages' rows
        command.downgrade(alembic_config(conn), "0002")
        row = conn.exec_driver_sql("SELECT body_text, body_html FROM messages").one()
    assert tuple(row) == ("Please pay 10.00 EUR.\n", "<p>Please pay <b>10.00 EUR</b>.</p>\n")


def test_a_new_database_is_created_at_the_latest_revision(engine: Engine) -> None:
    assert _revision(engine) == _head()


def test_the_migrations_build_exactly_the_schema_the_models_describe(engine: Engine) -> None:
    """Replaying every revision on an empty database must give what the models say: a model
    changed without its migration fails here."""
    drop_db(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert differences == []


def test_in_ids_selects_the_listed_rows_whatever_the_list(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Customer.__table__), [{"customer_id": "C1", "name": "A", "email": "a@x.org"}]
        )
        conn.execute(
            insert(Case.__table__),
            [
                {
                    "id": 1,
                    "customer_id": "C1",
                    "segment": "s",
                    "ladder": "l",
                    "opened_on": date(2025, 1, 1),
                }
            ],
        )
        conn.execute(
            insert(MESSAGES),
            [
                {"id": n, "key": f"k{n}", "case_id": 1, "customer_id": "C1", "kind": "reminder",
                 "stage": "gentle", "stage_index": 0, "template": "gentle",
                 "to_address": "a@x.org", "planned_on": date(2025, 1, 1)}
                for n in range(1, 8)
            ],
        )  # fmt: skip
    query = select(MESSAGES.c.id).where(in_ids(MESSAGES.c.id)).order_by(MESSAGES.c.id)
    with engine.connect() as conn:
        for ids in ([2, 5], [1, 2, 3, 4, 5, 6, 7], [7], [], [99, 3]):
            assert conn.scalars(query, {"ids": ids}).all() == sorted(set(ids) & set(range(1, 8)))


def _rendered_before_contents(conn: Connection) -> None:
    """A customer, a case and a message rendered into the outbox's own row (before 0003)."""
    conn.execute(insert(Customer.__table__).values(customer_id="C1", name="A", email="a@x.org"))
    conn.execute(
        insert(Case.__table__).values(
            id=1, customer_id="C1", segment="s", ladder="l", opened_on=date(2025, 1, 1)
        )
    )
    conn.execute(
        text("INSERT INTO messages (id, key, case_id, customer_id, kind, stage, stage_index, "
             "template, locale, to_address, planned_on, status, subject, body_text, body_html, "
             "attempts) VALUES (1, 'k1', 1, 'C1', 'reminder', 'gentle', 0, 'gentle', 'en', "
             "'a@x.org', '2025-01-01', 'planned', 'Invoice', :text, :html, 0)"),
        {"text": "Please pay 10.00 EUR.", "html": "<p>Please pay <b>10.00 EUR</b>.</p>"},
    )  # fmt: skip


def _assert_bodies_moved(engine: Engine) -> None:
    columns = {column["name"] for column in inspect(engine).get_columns("messages")}
    assert not {"body_text", "body_html"} & columns
    with engine.connect() as conn:
        contents = MessageContent.__table__
        message_id, body_mime = conn.execute(
            select(contents.c.message_id, contents.c.body_mime)
        ).one()
    text, html = "Please pay 10.00 EUR.", "<p>Please pay <b>10.00 EUR</b>.</p>"
    assert (message_id, body_mime) == (1, mime_body(text, html, "k1")), "as render builds it"
    assert mime_parts(body_mime) == (text + "\n", html + "\n")


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _indexes(engine: Engine) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes("messages")}
