"""Collectflow's exceptions. Each says what went wrong in words a user can act on."""

from __future__ import annotations


class CollectflowError(Exception):
    """Base of every error Collectflow raises on purpose."""


class BadUsage(CollectflowError):
    """Command-line options that don't go together (exit code 2, like any bad input)."""


class ConfigError(CollectflowError):
    """Settings are missing or invalid (environment, `.env`)."""


class PolicyError(CollectflowError):
    """`policy.yaml` is invalid; the message names the path of the bad key."""


class TemplateError(CollectflowError):
    """A message template is missing, broken, or uses a variable the context lacks."""


class ImportRejected(CollectflowError):
    """A ledger file had invalid rows; nothing from it was imported.

    `errors` holds every problem as `file:line: field: why`.
    """

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = "\n".join(errors[:50])
        more = f"\n... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{len(errors)} invalid row(s), nothing imported:\n{shown}{more}")


class DeliveryError(CollectflowError):
    """A message could not be handed to the mail transport."""
