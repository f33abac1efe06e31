"""The links a customer message carries: its answer page, in the body, and its one-click opt-out,
in the List-Unsubscribe header.

Render signs each customer message's token over (message id, customer id, expiry) with the
expiry counted from the render date (`policy.feedback.link_expiry_days`) and stores that day
with the body (`message_contents.link_expires_on`); delivery signs the same claims again for
the header. The serializer is deterministic, so both carry the same token (after a key
rotation between the two, the header's is signed by the new key: both verify).

A run that writes customer messages needs `COLLECTFLOW_LINK_SECRET` and `COLLECTFLOW_PUBLIC_URL`:
without them `message_links` raises ConfigError at startup, never a message without its link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from urllib.parse import urlsplit

from collectflow.flows.config import Settings
from collectflow.flows.errors import ConfigError
from collectflow.flows.feedback.links import LinkSigner, one_click_url, page_url, signer


@dataclass(frozen=True)
class MessageLinks:
    """Signs the links of customer messages with the configured keys, under the public URL."""

    signer: LinkSigner
    public_url: str

    def token(self, message_id: int, customer_id: str, expires_on: date) -> str:
        return self.signer.sign(message_id, customer_id, expires_on)

    def answer_url(self, message_id: int, customer_id: str, expires_on: date) -> str:
        """The customer page of the message: what the body links to."""
        return page_url(self.public_url, self.token(message_id, customer_id, expires_on))

    def one_click_url(self, message_id: int, customer_id: str, expires_on: date) -> str | None:
        """RFC 8058's one-click opt-out URL of the message; None when the public URL is not
        https (a local demo), as RFC 8058 allows only an HTTPS URI there."""
        if not self.public_url.startswith("https://"):
            return None
        return one_click_url(self.public_url, self.token(message_id, customer_id, expires_on))


def message_links(settings: Settings) -> MessageLinks:
    """The links of the configured keys and public URL; ConfigError naming the setting that is
    missing or wrong."""
    return MessageLinks(signer(settings), public_url(settings))


def public_url(settings: Settings) -> str:
    """`COLLECTFLOW_PUBLIC_URL` checked: an http(s) base URL with a host, no query or fragment."""
    value = (settings.public_url or "").strip()
    if not value:
        raise ConfigError(
            "COLLECTFLOW_PUBLIC_URL is not set: customer messages link to the customer page, "
            "served by `collectflow serve`, under this base URL (e.g. https://pay.example.com)"
        )
    if not _base_url(value):
        raise ConfigError(
            f"COLLECTFLOW_PUBLIC_URL {value!r} is not a base URL like https://pay.example.com "
            "(http or https, a host, an optional path; no query or fragment)"
        )
    return value.rstrip("/")


def _base_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return False
    return (
        parts.scheme in ("https", "http")
        and bool(host)
        and not (parts.query or parts.fragment)
        and not any(char.isspace() for char in value)
    )
