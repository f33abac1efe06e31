"""The database layer: `init_db` on a database made by an earlier release, and `in_ids`, the
one-parameter id list every claim and record of a delivery uses."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Engine, insert, inspect, select

from models import Case, Customer, Message, in_ids, init_db

MESSAGES = Message.__table__


def test_init_db_adds_an_index_missing_from_an_existing_table(engine: Engine) -> None:
    # a database from before the delivery index: the table exists, the index does not
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_messages_status_id")
    assert "ix_messages_status_id" not in _indexes(engine)

    init_db(engine)
    init_db(engine)  # and again: nothing to do, no error

    assert "ix_messages_status_id" in _indexes(engine)


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


def _indexes(engine: Engine) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes("messages")}
