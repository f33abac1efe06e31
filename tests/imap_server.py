"""A real IMAP server for tests: Debian's Dovecot on 127.0.0.1, with a throwaway configuration.

    with DovecotServer(tmp) as server:
        server.deliver(raw_bytes)                         # APPEND to the user's INBOX
        ... point COLLECTFLOW_IMAP_* at server.settings() and read the inbox ...
        server.uids("INBOX"), server.folders()

It listens for implicit TLS (imaps) on a free port, with a self-signed certificate made by
`openssl` for 127.0.0.1 (the client checks it through `COLLECTFLOW_IMAP_CA_FILE`), one user
in a passwd-file, and mail in a Maildir under a temporary folder. Run as root (CI), Dovecot
drops to its own `dovecot`/`dovenull` users, which own the mail folder; otherwise it runs
entirely as the current user. `unavailable()` says why it cannot run here (tests skip).
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DOVECOT = Path("/usr/sbin/dovecot")
HOST = "127.0.0.1"
USER = "collect"
PASSWORD = "s3cret-for-tests"

CONFIG = """\
protocols = imap
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
mail_location = maildir:{root}/mail/%u
first_valid_uid = {uid}
mail_privileged_group =
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
  chroot =
}}
"""


def unavailable() -> str | None:
    """Why Dovecot cannot run here, or None."""
    if not DOVECOT.exists():
        return f"{DOVECOT} missing: install dovecot-imapd to run the IMAP tests"
    if shutil.which("openssl") is None:
        return "the openssl command is missing (it makes the server's certificate)"
    if os.getuid() == 0:
        try:
            pwd.getpwnam("dovecot"), pwd.getpwnam("dovenull")
        except KeyError:
            return "run as root without Dovecot's own users (dovecot, dovenull)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class DovecotServer:
    """Dovecot on a free port of 127.0.0.1; stopped and removed on exit."""

    def __init__(self) -> None:
        # a short root: Dovecot's unix sockets live under it (paths of at most 108 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="cf-imap-"))
        self.port = free_port()
        self.cert = self.root / "cert.pem"
        self._config = self.root / "dovecot.conf"

    def __enter__(self) -> DovecotServer:
        self._certificate()
        self.root.chmod(0o755)  # Dovecot's unprivileged processes read the passwd-file
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        for folder in ("run", "state", "mail", "home"):
            (self.root / folder).mkdir()
        if os.getuid() == 0:
            mail_user, login_user = pwd.getpwnam("dovecot"), "dovenull"
            for folder in ("mail", "home"):
                os.chown(self.root / folder, mail_user.pw_uid, mail_user.pw_gid)
        else:
            mail_user = pwd.getpwuid(os.getuid())
            login_user = mail_user.pw_name
        self._config.write_text(
            CONFIG.format(
                host=HOST, root=self.root, port=self.port, uid=mail_user.pw_uid,
                gid=mail_user.pw_gid, login_user=login_user, internal_user=mail_user.pw_name,
                internal_group=_group_name(mail_user.pw_gid),
            )
        )  # fmt: skip
        subprocess.run([str(DOVECOT), "-c", str(self._config)], check=True, timeout=30)
        self._wait_until_listening()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subprocess.run([str(DOVECOT), "-c", str(self._config), "stop"], check=False, timeout=30)
        deadline = time.monotonic() + 10
        while (self.root / "run" / "master.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def _certificate(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(self.root / "key.pem"), "-out", str(self.cert),
             "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        log = (self.root / "dovecot.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Dovecot did not start on {HOST}:{self.port}:\n{log}")

    def env(self) -> dict[str, str]:
        """The settings that point Collectflow at this server."""
        return {
            "COLLECTFLOW_IMAP_HOST": HOST,
            "COLLECTFLOW_IMAP_PORT": str(self.port),
            "COLLECTFLOW_IMAP_USER": USER,
            "COLLECTFLOW_IMAP_PASSWORD": PASSWORD,
            "COLLECTFLOW_IMAP_CA_FILE": str(self.cert),
        }

    def client(self) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=str(self.cert))
        imap = imaplib.IMAP4_SSL(HOST, self.port, ssl_context=context, timeout=10)
        imap.login(USER, PASSWORD)
        return imap

    def deliver(self, *mails: bytes, folder: str = "INBOX") -> None:
        """Put mail in a folder, as the server's delivery agent would."""
        imap = self.client()
        try:
            for raw in mails:
                typ, answer = imap.append(folder, None, None, raw)
                assert typ == "OK", answer
        finally:
            imap.logout()

    def messages(self, folder: str) -> list[bytes]:
        """The mail in a folder, as stored (its Message-IDs are what tests compare)."""
        imap = self.client()
        try:
            typ, _ = imap.select(f'"{folder}"', readonly=True)
            assert typ == "OK", f"no folder {folder}"
            _, found = imap.uid("SEARCH", "ALL")
            uids = (found[0] or b"").split()
            if not uids:
                return []
            _, data = imap.uid("FETCH", b",".join(uids).decode(), "(BODY.PEEK[])")
            return [bytes(item[1]) for item in data if isinstance(item, tuple)]
        finally:
            imap.logout()

    def folders(self) -> list[str]:
        imap = self.client()
        try:
            _, listed = imap.list()
            return sorted(line.decode().rsplit(" ", 1)[-1].strip('"') for line in listed if line)
        finally:
            imap.logout()


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name
