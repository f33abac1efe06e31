"""Message bodies move from the outbox's rows to `message_contents`, as their MIME parts.

A status change rewrote the whole `messages` row, bodies included: a few KB, four or five
times a message (see `models.tables.MessageContent`). Each rendered message's text and HTML
become the MIME part its email carries, built here as render now builds it (a frozen copy of
`mime_body` of flows/mail/compose.py at this revision: a migration must not change
when the code does);
the downgrade reads them back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence
from email import message_from_string, policy
from email.message import EmailMessage

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
MESSAGES = sa.table(
    "messages",
    sa.column("id", sa.Integer),
    sa.column("key", sa.String),
    sa.column("body_text", sa.Text),
    sa.column("body_html", sa.Text),
)
CONTENTS = sa.table(
    "message_contents", sa.column("message_id", sa.Integer), sa.column("body_mime", sa.Text)
)


def upgrade() -> None:
    op.create_table(  # exists already when `init_db` created a pre-migration database's gaps
        "message_contents",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("body_mime", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("message_id"),
        if_not_exists=True,
    )
    conn = op.get_bind()
    rendered = sa.or_(MESSAGES.c.body_text.is_not(None), MESSAGES.c.body_html.is_not(None))
    after = 0
    while rows := conn.execute(
        sa.select(MESSAGES.c.id, MESSAGES.c.key, MESSAGES.c.body_text, MESSAGES.c.body_html)
        .where(rendered, MESSAGES.c.id > after)
        .order_by(MESSAGES.c.id)
        .limit(BATCH)
    ).all():
        conn.execute(
            sa.insert(CONTENTS),
            [
                {"message_id": id_, "body_mime": _mime(text, html, key)}
                for id_, key, text, html in rows
            ],
        )
        after = rows[-1].id
    op.drop_column("messages", "body_text")
    op.drop_column("messages", "body_html")


def downgrade() -> None:
    op.add_column("messages", sa.Column("body_text", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("body_html", sa.Text(), nullable=True))
    conn = op.get_bind()
    stored = conn.execute(sa.select(CONTENTS.c.message_id, CONTENTS.c.body_mime)).all()
    if stored:
        message_id = sa.bindparam("m_id")
        conn.execute(
            sa.update(MESSAGES)
            .where(MESSAGES.c.id == message_id)
            .values(body_text=sa.bindparam("m_text"), body_html=sa.bindparam("m_html")),
            [dict(zip(("m_id", "m_text", "m_html"), (id_, *_parts(mime)), strict=True))
             for id_, mime in stored],
        )  # fmt: skip
    op.drop_table("message_contents")


def _mime(text: str | None, html: str | None, key: str) -> str:
    text = text or ""
    if not html:
        return "MIME-Version: 1.0\n" + _part(text, "plain")
    boundary = "=_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return (
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
        f"--{boundary}\n{_part(text, 'plain')}\n"
        f"--{boundary}\n{_part(html, 'html')}\n"
        f"--{boundary}--\n"
    )


def _part(content: str, subtype: str) -> str:
    lines = "\n".join(content.splitlines())
    encoded = binascii.b2a_qp(lines.encode("utf-8"), istext=True).decode("ascii")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\n'
        f"Content-Transfer-Encoding: quoted-printable\n\n{encoded}\n"
    )


def _parts(mime: str) -> tuple[str, str | None]:
    email = message_from_string(mime, policy=policy.default)
    text, html = email.get_body(("plain",)), email.get_body(("html",))
    return (
        text.get_content() if isinstance(text, EmailMessage) else "",
        html.get_content() if isinstance(html, EmailMessage) else None,
    )
