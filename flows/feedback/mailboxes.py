"""What every inbox reader gives and takes: a Maildir (maildir_inbox.py) or an IMAP folder
(imap_inbox.py).

A reader yields the unread mail in batches (`Fetched`: where it is, its bytes) and, once a
batch is filed and committed, marks it filed (`done`): moved, never deleted, so a mail is
never lost and a crash before `done` only makes the next run file it again, to no effect.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Fetched:
    """One unread mail: `source` names it for the record, `handle` is the reader's own."""

    source: str
    raw: bytes
    handle: Any = None


class Reader(Protocol):
    """An inbox: a Maildir (maildir_inbox.py) or an IMAP folder (imap_inbox.py)."""

    name: str

    def __enter__(self) -> Reader: ...

    def __exit__(self, *exc: Any) -> None: ...

    def batches(self, size: int) -> Iterator[list[Fetched]]: ...

    def done(self, fetched: Sequence[Fetched]) -> None: ...
