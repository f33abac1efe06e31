"""The Maildir inbox (`COLLECTFLOW_INBOX`, or `collectflow inbox --maildir PATH`): mail a
local delivery agent (Postfix, fetchmail, Dovecot's LDA, getmail) drops into a Maildir.

Unread mail is what sits in `new/`, and what sits in `cur/` without the Seen flag. A mail
filed is moved to `cur/` with the Seen flag (`S`) by one rename (atomic on one file system):
never rewritten, never deleted. The rename comes after the filing's transaction has
committed, so a crash in between leaves the mail in `new/`, and the next run files it again
to no effect (same key) before moving it: nothing is lost, nothing filed twice.

The stdlib's `mailbox.Maildir` opens the folder (refusing one that is not a Maildir); the
move is a plain rename, since `mailbox` would write the message anew to change its flags.
"""

from __future__ import annotations

import mailbox
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from collectflow.flows.errors import ConfigError
from collectflow.flows.feedback.mailboxes import Fetched

INFO = ":2,"
SEEN = "S"


class MaildirInbox:
    """Reads the unread mail of a Maildir in batches and marks each batch filed."""

    def __init__(self, path: Path) -> None:
        try:
            mailbox.Maildir(path, factory=None, create=False)
        except mailbox.NoSuchMailboxError:
            raise ConfigError(
                f"inbox {path}: not a Maildir (a folder with new/, cur/ and tmp/); "
                "check COLLECTFLOW_INBOX or --maildir"
            ) from None
        if not (path / "new").is_dir() or not (path / "cur").is_dir():
            raise ConfigError(f"inbox {path}: not a Maildir (new/ or cur/ is missing)")
        self.path = path
        self.name = f"maildir:{path}"

    def __enter__(self) -> MaildirInbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def unread(self) -> list[Path]:
        """The unread mail files, oldest name first (Maildir names start with the time)."""
        found = [entry for entry in _files(self.path / "new")]
        found += [entry for entry in _files(self.path / "cur") if SEEN not in _flags(entry.name)]
        return sorted(found, key=lambda entry: entry.name)

    def batches(self, size: int) -> Iterator[list[Fetched]]:
        """The unread mail, `size` at a time; a file gone meanwhile (another run moved it) is
        skipped."""
        files = self.unread()
        for start in range(0, len(files), size):
            batch = []
            for entry in files[start : start + size]:
                try:
                    raw = entry.read_bytes()
                except FileNotFoundError:
                    continue
                batch.append(Fetched(f"maildir:{_unique(entry.name)}", raw, entry))
            yield batch

    def done(self, fetched: Sequence[Fetched]) -> None:
        """Move the filed mail to cur/ with the Seen flag."""
        for mail in fetched:
            entry = mail.handle
            assert isinstance(entry, Path)
            flags = "".join(sorted(set(_flags(entry.name)) | {SEEN}))
            target = self.path / "cur" / f"{_unique(entry.name)}{INFO}{flags}"
            try:
                os.rename(entry, target)
            except FileNotFoundError:  # moved by another run meanwhile: filed either way
                continue


def _files(folder: Path) -> Iterator[Path]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                yield Path(entry.path)


def _unique(name: str) -> str:
    return name.split(INFO)[0].split(":")[0]


def _flags(name: str) -> str:
    return name.split(INFO, 1)[1] if INFO in name else ""
