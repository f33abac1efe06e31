"""Header composition under any input (hypothesis): whatever the display name or subject, the
email has the same headers, one recipient, lines of at most 998 octets, and a name and subject
that decode to their own text, without CR or LF."""

from __future__ import annotations

import re
from email import policy
from email.parser import BytesParser

from hypothesis import given, settings
from hypothesis import strategies as st

from collectflow.flows.config import Settings
from collectflow.flows.mail import Composer, mime_body

HEADERS = {
    "From", "Reply-To", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}  # fmt: skip
HOSTILE = [
    "\r\n", "\r", "\n", "\x00", "\x7f", "\x1b", "\u2028", "\x85", "Bcc: x@y.org", ",", ";",
    "<evil@example.net>", '"', "\\", "(", ")", "=?", "?=", "=?utf-8?q?Evil=0D=0ABcc:_x@y.org?=",
    "=?utf-8?b?DQpCY2M6IHhAeS5vcmc=?=", "=?iso-8859-1?q?=E9?=", " ", "\t", "é", "😀", "\u202e",
]  # fmt: skip
hostile_text = st.one_of(
    st.lists(st.one_of(st.text(max_size=30), st.sampled_from(HOSTILE)), max_size=40).map("".join),
    st.text(min_size=500, max_size=3000),
    st.text(alphabet="aé =?-_\r\n", min_size=900, max_size=3000),
)
COMPOSER = Composer(
    Settings(
        smtp_from="Accounts <billing@example.com>",
        reply_to=None,
        link_secret="test-link-secret-0123456789abcdef",
        public_url="https://answers.example.com",
    )
)
WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def compose(name: str, subject: str) -> bytes:
    row = {"key": "k", "kind": "reminder", "customer_id": "C1", "customer_name": name,
           "to_address": "ada@example.org", "subject": subject,
           "body_mime": BODY, "message_id_header": None}  # fmt: skip
    return COMPOSER.compose(row).data


BODY = mime_body("Please pay.", None, "k")


def bare(text: str) -> str:
    """The text without whitespace or control characters: what must survive the trip."""
    return WHITESPACE_OR_CONTROL.sub("", text)


@settings(max_examples=200, deadline=None)
@given(name=hostile_text, subject=hostile_text)
def test_no_name_or_subject_adds_a_header_a_recipient_or_a_long_line(
    name: str, subject: str
) -> None:
    data = compose(name, subject)

    head = data.split(b"\n\n", 1)[0]
    assert max(len(line) for line in head.split(b"\n")) <= 998
    assert b"\r" not in head
    email = BytesParser(policy=policy.default).parsebytes(data)
    assert set(email.keys()) == HEADERS and len(email.keys()) == len(HEADERS)
    [to] = email["To"].addresses
    assert to.addr_spec == "ada@example.org"
    assert "\r" not in to.display_name and "\n" not in to.display_name
    shown = bare(to.display_name)
    assert bare(name).startswith(shown.removesuffix("...")), "the name's own text, maybe cut"
    assert "\r" not in email["Subject"] and "\n" not in email["Subject"]
    assert bare(email["Subject"]) == bare(subject)
