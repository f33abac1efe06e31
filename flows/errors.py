"""Collectflow's exceptions: one tree, each class saying when it is raised.

Every error Collectflow raises on purpose is a `CollectflowError`; the CLI turns one into its
message and exit code 2 (bad input), anything else into exit code 1. Messages are written for
the person who must act on them: what was wrong, where, and what to do.

`collectflow.models` sits below the engine and raises one exception of its own,
`MoneyPrecisionError` (a ValueError), when an amount with more than four decimals reaches the
database; the importer refuses such amounts first, with the file, line and field, so a user's
mistake never surfaces as it. Likewise the importer's private signals for one bad value or an
unreadable file never leave ledger/csv_import.py: they become the lines of `ImportRejected`.
"""

from __future__ import annotations

from collections.abc import Iterable


class CollectflowError(Exception):
    """Base of every error Collectflow raises on purpose."""


class BadUsage(CollectflowError):
    """Command-line options or flow parameters that don't go together (exit code 2)."""


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


class RunLocked(CollectflowError):
    """Another daily run of the same database held the run lock for longer than
    `COLLECTFLOW_RUN_LOCK_WAIT` seconds (flows/runlock.py); this run did nothing."""

    def __init__(self, holder: str, waited: float):
        self.holder = holder
        super().__init__(
            f"another run of this database is under way: {holder}; waited {waited:g} s for it. "
            "Run again once it has finished, or set COLLECTFLOW_RUN_LOCK_WAIT to wait longer"
        )


class UnknownCustomer(CollectflowError):
    """A command named a customer the ledger does not have (`segments --explain`)."""


class UnknownCase(CollectflowError):
    """A command or action named a case id that does not exist."""

    def __init__(self, case_id: int):
        super().__init__(f"no case with id {case_id} (see `collectflow queue`)")


class TransitionRefused(CollectflowError):
    """A case was asked to make a move its lifecycle does not allow; nothing was changed."""

    def __init__(self, case_id: int, current: str, target: str, allowed: Iterable[str]):
        self.case_id, self.current, self.target = case_id, current, target
        may = ", ".join(sorted(allowed)) or "none: the case is closed"
        super().__init__(
            f"case {case_id}: cannot go from {current!r} to {target!r} (from {current!r} it "
            f"may go to: {may})"
        )


class ConcurrentChange(CollectflowError):
    """A case changed between reading and writing it (another operator or the daily run)."""


class ActionRefused(CollectflowError):
    """An operator action was refused because of its input; nothing was changed."""


class ClaimRefused(CollectflowError):
    """A queue item could not be claimed or completed: unknown, already resolved, someone
    else's, or settled by an action rather than by hand."""


class NotInDoubt(CollectflowError):
    """The message named is not in doubt (`unknown`), so there is nothing to resolve."""


class DeliveryError(CollectflowError):
    """A message could not be handed to the mail transport (an unusable address, a header
    that cannot be written); the message fails with the reason, the delivery goes on."""


class NotRendered(DeliveryError):
    """A message claimed without a rendered body: not a state render leaves (it stores the
    body with the subject), but a lost row must fail its message, not stop the delivery."""

    reason = "not_rendered"


class UndeliverableMessage(DeliveryError):
    """A message that cannot go out as it is, whoever receives it: an address whose local part
    is not ASCII when the server does not offer SMTPUTF8, or text that cannot be encoded for
    the wire. The message fails alone with `reason`; the address is not blamed."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


class DeliveryInDoubt(DeliveryError):
    """The connection failed (dropped, timed out) after the whole message was transmitted,
    the end of DATA included, and before the server's reply to it: the server may have
    accepted it (RFC 5321 §6.1). The message goes `unknown` for an operator; it is never
    resent automatically, which could deliver it twice."""

    reason = "in_doubt"
