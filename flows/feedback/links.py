"""Signed links from a message to the customer page: who may answer, about which message, until
when.

A link carries a token signed with `itsdangerous` over (message id, customer id, expiry day), so
the page learns from the token alone which message it answers and refuses any token it did not
sign; nothing about a customer is readable without a valid signature. Keys rotate: the setting
`COLLECTFLOW_LINK_SECRET` is a comma-separated list whose first key signs and every key
verifies, so a new key goes first and an old one stays listed until its links have expired.

URLs under `COLLECTFLOW_PUBLIC_URL`:

    {public_url}/r/{token}              the customer page of one message (GET, forms POST)
    {public_url}/r/{token}/unsubscribe  RFC 8058 one-click opt-out (POST List-Unsubscribe=One-Click)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from itsdangerous import BadSignature, URLSafeSerializer

from collectflow.flows.config import Settings
from collectflow.flows.errors import ConfigError

SALT = "collectflow.answer-link.v1"
MIN_SECRET_LENGTH = 16


class BadLink(Exception):
    """A token that is malformed, tampered with, or signed by no key we know: answer 404/403."""


class ExpiredLink(Exception):
    """A genuine token past its expiry day: the page says so and how to reach the sender."""

    def __init__(self, claims: LinkClaims) -> None:
        super().__init__(f"link expired on {claims.expires_on.isoformat()}")
        self.claims = claims


@dataclass(frozen=True)
class LinkClaims:
    """What a valid token says: the message it belongs to, its customer, its last valid day."""

    message_id: int
    customer_id: str
    expires_on: date


class LinkSigner:
    """Signs and verifies answer-link tokens with the configured keys (first signs, all verify)."""

    def __init__(self, secrets: list[str]) -> None:
        if not secrets:
            raise ConfigError(
                "COLLECTFLOW_LINK_SECRET is not set: customer messages carry signed answer links"
                " and cannot be rendered without a key (set it to a random string of at least"
                f" {MIN_SECRET_LENGTH} characters; several, comma-separated, to rotate keys)"
            )
        short = [index for index, key in enumerate(secrets, 1) if len(key) < MIN_SECRET_LENGTH]
        if short:
            raise ConfigError(
                f"COLLECTFLOW_LINK_SECRET: key {short[0]} is shorter than {MIN_SECRET_LENGTH}"
                " characters"
            )
        # itsdangerous signs with the last key of the list and verifies with all of them.
        self._serializer = URLSafeSerializer(list(reversed(secrets)), salt=SALT)

    def sign(self, message_id: int, customer_id: str, expires_on: date) -> str:
        return self._serializer.dumps([message_id, customer_id, expires_on.toordinal()])

    def verify(self, token: str, today: date) -> LinkClaims:
        """The token's claims; `BadLink` when it is not ours, `ExpiredLink` after its day."""
        try:
            payload = self._serializer.loads(token)
        except (BadSignature, UnicodeError, ValueError):
            raise BadLink("not a valid answer link") from None
        if not (
            isinstance(payload, list)
            and len(payload) == 3
            and isinstance(payload[0], int)
            and isinstance(payload[1], str)
            and isinstance(payload[2], int)
        ):
            raise BadLink("not a valid answer link")
        try:
            expires_on = date.fromordinal(payload[2])
        except (ValueError, OverflowError):
            raise BadLink("not a valid answer link") from None
        claims = LinkClaims(message_id=payload[0], customer_id=payload[1], expires_on=expires_on)
        if today > claims.expires_on:
            raise ExpiredLink(claims)
        return claims


def link_secrets(settings: Settings) -> list[str]:
    """The configured keys, first one signing; empty when none is set."""
    if settings.link_secret is None:
        return []
    raw = settings.link_secret.get_secret_value()
    return [key.strip() for key in raw.split(",") if key.strip()]


def signer(settings: Settings) -> LinkSigner:
    """The signer of the configured keys; a clear `ConfigError` when none is set."""
    return LinkSigner(link_secrets(settings))


def expiry(sent_on: date, expiry_days: int) -> date:
    """The last day a link written on `sent_on` is valid."""
    return sent_on + timedelta(days=expiry_days)


def page_url(public_url: str, token: str) -> str:
    """The customer page of the message the token names."""
    return f"{public_url.rstrip('/')}/r/{token}"


def one_click_url(public_url: str, token: str) -> str:
    """The RFC 8058 one-click opt-out endpoint of the message the token names."""
    return f"{page_url(public_url, token)}/unsubscribe"
