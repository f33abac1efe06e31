"""The outbox and everything that turns its rows into mail.

- `outbox.py`: the message state machine (every status move logged) and `plan_messages`,
  the one way a message enters the outbox.
- `compose.py`: a rendered row becomes an email that clients and filters treat well
  (headers, threading, unsubscribe, Message-IDs).
- `contact.py`: the contact rules (opt-outs, bounced addresses, quiet hours, the cap).
- `transports.py` with `smtp.py` and `maildir.py`: every way an email leaves Collectflow.
- The delivery machinery, used through flows/steps/deliver.py: `claims.py` (the claim and
  result SQL), `delivery.py` (claim -> senders -> recorder in one event loop), `retry.py`
  (transient or permanent), `ratelimit.py`, `threads.py` (a case's earlier Message-IDs),
  `workers.py` (worker processes, expired leases).

The names below are what other packages use; the delivery machinery is imported by module.
"""

from collectflow.flows.mail.compose import (
    Composer,
    Email,
    message_id_for,
    mime_body,
    mime_parts,
    one_line,
    sender_domain,
)
from collectflow.flows.mail.contact import record_opt_out
from collectflow.flows.mail.outbox import (
    PLANNED,
    SUPPRESSED,
    in_doubt,
    move,
    plan_messages,
    resolve_in_doubt,
)
from collectflow.flows.mail.transports import Transport, transport_for

__all__ = [
    "PLANNED",
    "SUPPRESSED",
    "Composer",
    "Email",
    "Transport",
    "in_doubt",
    "message_id_for",
    "mime_body",
    "mime_parts",
    "move",
    "one_line",
    "plan_messages",
    "record_opt_out",
    "resolve_in_doubt",
    "sender_domain",
    "transport_for",
]
