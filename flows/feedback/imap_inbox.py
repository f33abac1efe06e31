"""The IMAP inbox (`COLLECTFLOW_IMAP_HOST`, `_USER`, `_PASSWORD`, `_FOLDER`): the monitored
reply address's mailbox, read with the stdlib's imaplib over TLS.

TLS is required: implicit TLS on port 993 (`IMAP4_SSL`) by default, or STARTTLS on port 143
(`COLLECTFLOW_IMAP_SECURITY=starttls`; a server that does not offer it is refused), the
server's certificate checked against the system's CAs or `COLLECTFLOW_IMAP_CA_FILE`.
`COLLECTFLOW_IMAP_SECURITY=plain` (no TLS: the password in clear) is refused for any host but
this machine's loopback, where tests run a throwaway server.

Every mail in the folder is unread to Collectflow: mail is fetched with BODY.PEEK (no Seen
flag set), and once its batch is filed and committed it is moved to the processed folder
(`COLLECTFLOW_IMAP_PROCESSED_FOLDER`, default `Collectflow/Processed`, "/" written as the
server's own separator, created if missing) with MOVE (RFC 6851), or COPY then delete where
the server lacks MOVE (UID EXPUNGE with UIDPLUS, so only those go). A crash between filing
and moving leaves the mail in the folder: the next run files it again, to no effect, and
moves it. Nothing is ever deleted unseen.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

from collectflow.flows.config import Settings
from collectflow.flows.errors import ConfigError
from collectflow.flows.feedback.mailboxes import Fetched

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
UID = re.compile(rb"\bUID (\d+)")
LIST_ENTRY = re.compile(rb'\((?P<flags>[^)]*)\) (?P<delimiter>"[^"]*"|NIL) (?P<name>.+)$')


class ImapInbox:
    """Reads an IMAP folder in batches and moves each filed batch to the processed folder."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.imap_host and settings.imap_user and settings.imap_password):
            raise ConfigError(
                "IMAP inbox: set COLLECTFLOW_IMAP_HOST, COLLECTFLOW_IMAP_USER and "
                "COLLECTFLOW_IMAP_PASSWORD together"
            )
        if settings.imap_security == "plain" and settings.imap_host not in LOOPBACK:
            raise ConfigError(
                f"COLLECTFLOW_IMAP_SECURITY=plain would send the password in clear to "
                f"{settings.imap_host}: use tls or starttls (plain is for a server on this "
                "machine's loopback only)"
            )
        self.settings = settings
        self.name = f"imap:{settings.imap_user}@{settings.imap_host}/{settings.imap_folder}"
        self._imap: imaplib.IMAP4 | None = None
        self._processed = settings.imap_processed_folder
        self._can_move = False
        self._uid_expunge = False

    def __enter__(self) -> ImapInbox:
        imap = self._connect()
        self._imap = imap
        try:
            password = self.settings.imap_password.get_secret_value()  # type: ignore[union-attr]
            imap.login(str(self.settings.imap_user), password)
        except imaplib.IMAP4.error as exc:
            imap.shutdown()
            raise ConfigError(f"{self.name}: login refused ({_said(exc)})") from None
        capabilities = _ok(imap.capability(), "CAPABILITY")[0].upper().split()
        self._can_move = b"MOVE" in capabilities
        self._uid_expunge = b"UIDPLUS" in capabilities
        self._processed = self._processed_folder(imap)
        _ok(imap.select(_quoted(self.settings.imap_folder)), f"SELECT {self.settings.imap_folder}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._imap is not None:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                self._imap.logout()
            self._imap = None

    def _connect(self) -> imaplib.IMAP4:
        settings = self.settings
        host, timeout = str(settings.imap_host), settings.imap_timeout
        if settings.imap_security == "plain":
            return imaplib.IMAP4(host, settings.imap_port or 143, timeout=timeout)
        context = ssl.create_default_context(
            cafile=str(settings.imap_ca_file) if settings.imap_ca_file else None
        )
        if settings.imap_security == "tls":
            return imaplib.IMAP4_SSL(
                host, settings.imap_port or 993, ssl_context=context, timeout=timeout
            )
        imap = imaplib.IMAP4(host, settings.imap_port or 143, timeout=timeout)
        try:
            imap.starttls(ssl_context=context)
        except imaplib.IMAP4.error as exc:
            imap.shutdown()
            raise ConfigError(f"{self.name}: STARTTLS refused ({_said(exc)})") from None
        return imap

    def _processed_folder(self, imap: imaplib.IMAP4) -> str:
        """The processed folder's name in the server's separator, created if missing."""
        typ, listed = imap.list('""', '""')
        match = LIST_ENTRY.search(listed[0]) if typ == "OK" and listed and listed[0] else None
        delimiter = match.group("delimiter").strip(b'"').decode() if match else "/"
        name = self.settings.imap_processed_folder.replace("/", delimiter or "/")
        typ, found = imap.list('""', _quoted(name))
        if typ != "OK" or not [entry for entry in found if entry]:
            _ok(imap.create(_quoted(name)), f"CREATE {name}")
        return name

    @property
    def imap(self) -> imaplib.IMAP4:
        if self._imap is None:
            raise RuntimeError("the IMAP inbox is read inside `with`")
        return self._imap

    def batches(self, size: int) -> Iterator[list[Fetched]]:
        """Every mail in the folder, `size` at a time (not flagged as seen)."""
        found = _ok(self.imap.uid("SEARCH", "UNDELETED"), "UID SEARCH")
        uids = [uid.decode() for uid in (found[0] or b"").split()]
        for start in range(0, len(uids), size):
            chunk = ",".join(uids[start : start + size])
            data = _ok(self.imap.uid("FETCH", chunk, "(BODY.PEEK[])"), "UID FETCH")
            batch = []
            for item in data:
                if not isinstance(item, tuple):
                    continue
                uid = UID.search(item[0])
                if uid is not None:
                    source = f"imap:{self.settings.imap_folder}:{uid.group(1).decode()}"
                    batch.append(Fetched(source, bytes(item[1]), uid.group(1).decode()))
            yield batch

    def done(self, fetched: Sequence[Fetched]) -> None:
        """Move the filed mail to the processed folder (MOVE, or COPY and delete)."""
        if not fetched:
            return
        uids = ",".join(str(mail.handle) for mail in fetched)
        folder = _quoted(self._processed)
        if self._can_move:
            _ok(self.imap.uid("MOVE", uids, folder), "UID MOVE")
            return
        _ok(self.imap.uid("COPY", uids, folder), "UID COPY")
        _ok(self.imap.uid("STORE", uids, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE")
        if self._uid_expunge:  # only these: never another message someone marked deleted
            _ok(self.imap.uid("EXPUNGE", uids), "UID EXPUNGE")
        else:
            _ok(self.imap.expunge(), "EXPUNGE")


def _ok(response: tuple[str, list[Any]], command: str) -> list[Any]:
    typ, data = response
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{command} answered {typ}: {_said(data)}")
    return data


def _said(data: Any) -> str:
    if isinstance(data, list):
        data = b" ".join(part for part in data if isinstance(part, bytes))
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _quoted(name: str) -> str:
    """A mailbox name as an IMAP quoted string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
