"""Step 5, deliver: send what is rendered and due, exactly once, and record what happened.

A delivery is a small pipeline in one event loop:

    claim (DB, in a thread) ──► queue ──► N senders (pooled SMTP connections) ──► recorder (DB)

Claiming is one transaction: take the due messages (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so
workers in other processes take other rows; SQLite: one writer at a time), re-check each
just before sending (still owed, case not paused, customer not opted out, address not
bounced: otherwise `suppressed` with the reason), hold back what the contact rules defer
(quiet hours, the cap), and mark the rest `sending` under this worker's lease. The recorder
writes results every few tenths of a second, so a crash leaves unconfirmed only what was
claimed and not yet recorded. Such messages are found `sending` with an expired lease by the
next delivery and moved to `unknown`: reported and queued for an operator, never resent.

Transient failures (4xx, dropped connection, timeout) go back to `planned` with an
exponential backoff (`next_attempt_at`) until MAX_ATTEMPTS; a 5xx answer to the recipient
or the data is permanent: the message is `bounced`, the address blocked, the case queued.

Without `settings.smtp_host` mail goes to a Maildir at `settings.outbox` that any mail client
can open; otherwise through aiosmtplib, one reused connection per concurrent sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mailbox
import multiprocessing
import os
import socket
import ssl
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import ColumnElement, Exists, Select

from collectflow.flows.cases.lifecycle import CLOSED, PAUSED_STATES
from collectflow.flows.cases.queue import queue_cases
from collectflow.flows.config import Settings
from collectflow.flows.errors import DeliveryError
from collectflow.flows.ledger.balances import settled_amount, settling
from collectflow.flows.mail.compose import Composer, Email
from collectflow.flows.mail.outbox import (
    BOUNCED,
    EVENT_COLUMNS,
    EVENTS,
    FAILED,
    IN_DOUBT,
    PLANNED,
    SENDING,
    SENT,
    SUPPRESSED,
    log_moves,
    move,
    move_statement,
    run_move,
    take_write_lock,
)
from collectflow.flows.policy.contact import Contact
from collectflow.flows.policy.document import load_policy
from collectflow.flows.steps.contact import (
    INTERNAL,
    address_bounced,
    block,
    later_in_batch,
    must_wait,
    opted_out,
    quiet_deferrals,
    to_customer,
)
from collectflow.models import (
    Case,
    Customer,
    Invoice,
    Message,
    MessageContent,
    MessageItem,
    Payment,
    in_ids,
    make_engine,
)

log = logging.getLogger(__name__)

MESSAGES = Message.__table__
CONTENTS = MessageContent.__table__
ITEMS = MessageItem.__table__
INVOICES = Invoice.__table__
PAYMENTS = Payment.__table__
CUSTOMERS = Customer.__table__
CASES = Case.__table__

MAX_ATTEMPTS = 5
SEND_FAILURES = (aiosmtplib.SMTPException, DeliveryError, OSError, TimeoutError)
FLUSH_EVERY = 0.2  # seconds between result writes: bounds what a crash leaves in doubt
FLUSH_SIZE = 100

Clock = Callable[[], datetime]


@dataclass
class DeliveryReport:
    """What one delivery did. `retrying`: transient failures waiting for their backoff;
    `deferred`: held back by a contact rule (quiet hours, cap); `in_doubt`: ids of messages
    found in flight from a worker that stopped, now `unknown` and queued for an operator."""

    sent: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    bounced: int = 0
    retrying: int = 0
    deferred: dict[str, int] = field(default_factory=dict)
    in_doubt: list[int] = field(default_factory=list)

    def merge(self, other: DeliveryReport) -> None:
        """Add another worker's report to this one."""
        self.sent += other.sent
        self.bounced += other.bounced
        self.retrying += other.retrying
        self.in_doubt += other.in_doubt
        for mine, theirs in (
            (self.suppressed, other.suppressed),
            (self.failed, other.failed),
            (self.deferred, other.deferred),
        ):
            _count(mine, [k for k, n in theirs.items() for _ in range(n)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Transport(Protocol):
    """Hands one email to the mail system; raises when it was not accepted."""

    async def send(self, email: Email) -> None: ...

    async def close(self) -> None: ...


class MaildirTransport:
    """Writes each email into a Maildir's `new/` folder, readable by any mail client."""

    def __init__(self, path: Path):
        self._maildir = mailbox.Maildir(path, create=True)

    async def send(self, email: Email) -> None:
        self._maildir.add(email.data)

    async def close(self) -> None:
        self._maildir.close()


class SmtpTransport:
    """A pool of SMTP connections, one per concurrent sender, each reused from send to send.

    A connection found closed is reopened before the next email; one that failed mid-send is
    closed, since its state is unknown, and so is one the server answered 421 (closing).
    Failing to open a session (refused, timed out, TLS or login rejected) raises
    DeliveryError: the server's or the settings' fault, not the message's, so it counts as
    transient.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._clients: list[aiosmtplib.SMTP] = []
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls_context = (
            ssl.create_default_context(cafile=str(settings.smtp_ca_file))
            if settings.smtp_ca_file
            else None
        )

    async def send(self, email: Email) -> None:
        client = self._idle.pop() if self._idle else self._new_client()
        try:
            if not client.is_connected:
                await self._connect(client)
            await client.sendmail(email.sender, [email.recipient], email.data)
        except (ConnectionError, TimeoutError):
            client.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:  # the server is closing the session (RFC 5321 3.8)
                client.close()
            raise
        finally:
            self._idle.append(client)

    async def close(self) -> None:
        for client in self._clients:
            if client.is_connected:
                try:
                    await client.quit()
                except aiosmtplib.SMTPException:
                    client.close()

    def _new_client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            use_tls=settings.smtp_tls,
            start_tls=False if settings.smtp_tls else settings.smtp_starttls,
            tls_context=self._tls_context,
            timeout=settings.smtp_timeout,
        )
        self._clients.append(client)
        return client

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, ssl.SSLError) as exc:
            client.close()
            raise DeliveryError(
                f"could not open an SMTP session with {client.hostname}:{client.port}: {exc}; "
                "check COLLECTFLOW_SMTP_HOST, _PORT, _TLS, _STARTTLS, _USERNAME and _PASSWORD"
            ) from exc


class RateLimit:
    """Spaces the start of sends at least 1/rate seconds apart, across all senders."""

    def __init__(self, per_second: float | None):
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


def transport_for(settings: Settings) -> Transport:
    """SMTP when a host is configured, else the Maildir outbox."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    return MaildirTransport(settings.outbox)


def worker_name() -> str:
    """Who claims: host, process and a random tag, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def deliver_due(
    engine: Engine,
    settings: Settings,
    as_of: date,
    contact: Contact | None = None,
    batch_size: int = 200,
    now: datetime | None = None,
) -> DeliveryReport:
    """Send every rendered message planned on or before `as_of` that is due and still owed.

    Safe to run again and from several workers at once. `contact` defaults to the policy's
    contact rules; `now` (default: the clock) is when the delivery happens.
    """
    contact = contact if contact is not None else load_policy(settings.policy).contact
    clock: Clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    delivery = Delivery(engine, settings, as_of, contact, clock, worker_name())
    delivery.report.in_doubt = recheck_expired_leases(engine, as_of, clock(), delivery.worker)
    asyncio.run(delivery.run(batch_size))
    return delivery.report


def deliver_with_workers(
    settings: Settings, as_of: date, workers: int, batch_size: int = 200
) -> DeliveryReport:
    """Deliver with `workers` processes, each claiming its own batches, and add up their reports.

    On PostgreSQL the workers claim and send in parallel (SKIP LOCKED); on SQLite they take
    turns to claim, one writer at a time, and send in parallel.
    """
    if workers <= 1:
        return _worker(settings, as_of, batch_size)
    with ProcessPoolExecutor(workers, mp_context=_worker_context()) as pool:
        futures = [pool.submit(_worker, settings, as_of, batch_size) for _ in range(workers)]
        reports = [future.result() for future in futures]
    total = DeliveryReport()
    for report in reports:
        total.merge(report)
    return total


def _worker_context() -> multiprocessing.context.BaseContext:
    """Where worker processes come from: clean interpreters, never a fork of this process
    (its threads, Prefect's included, and its sockets must not be copied).

    Where available, a fork server that has imported this module once forks them: importing
    Collectflow anew in each worker costs seconds of CPU; otherwise each is spawned.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _worker(settings: Settings, as_of: date, batch_size: int) -> DeliveryReport:
    engine = make_engine(settings.database_url)
    try:
        return deliver_due(engine, settings, as_of, batch_size=batch_size)
    finally:
        engine.dispose()


def recheck_expired_leases(engine: Engine, as_of: date, now: datetime, worker: str) -> list[int]:
    """Move messages left `sending` past their lease to `unknown`, and queue their cases.

    Their worker stopped between claiming and recording: each may or may not have reached
    the mail server. Resending blindly could send twice, so they wait for an operator.
    """
    with engine.begin() as conn:
        take_write_lock(conn)
        reason = literal("in flight when its worker stopped (lease expired): ") + func.coalesce(
            MESSAGES.c.claimed_by, ""
        )
        ids = move(conn, MESSAGES.c.lease_until < now, SENDING, IN_DOUBT, reason, now, worker)
        if ids:
            log.warning("%d message(s) in doubt, queued for an operator: %s", len(ids), ids)
            cases = select(MESSAGES.c.case_id, MESSAGES.c.customer_id).where(MESSAGES.c.id.in_(ids))
            queue_cases(conn, cases.distinct(), "delivery_in_doubt", as_of)
    return ids


@dataclass(frozen=True)
class _Job:
    """A claimed message waiting for a sender: its row, and the Message-IDs it replies to."""

    row: dict[str, Any]
    earlier: Sequence[str]


@dataclass(frozen=True)
class _Result:
    """What happened to one claimed message, as it will be written back."""

    message_id: int
    status: str
    reason: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


class Delivery:
    """One worker's delivery run: claims, sends and records until nothing is due."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        as_of: date,
        contact: Contact,
        clock: Clock,
        worker: str,
    ):
        self.engine = engine
        self.settings = settings
        self.as_of = as_of
        self.contact = contact
        self.clock = clock
        self.worker = worker
        self.composer = Composer(settings)  # bad mail settings stop us before any claim
        self._sql = _Statements(as_of, contact)
        self.report = DeliveryReport()
        self._pending: list[_Result] = []
        self._flush = asyncio.Event()
        self._unexpected: list[BaseException] = []

    async def run(self, batch_size: int) -> None:
        """Claim batches while anything is due, with senders and the recorder running along.

        Under a rate limit, batches shrink so that a claimed message waits about half its
        lease at most for its turn (plus one slot per sender): a lease must not run out while
        its message is still queued.
        """
        rate = self.settings.smtp_rate_per_second
        if rate:
            batch_size = min(
                batch_size, max(1, int(rate * self.settings.delivery_lease_seconds / 2))
            )
        transport = transport_for(self.settings)
        queue: asyncio.Queue[_Job | None] = asyncio.Queue(batch_size)
        concurrency = max(self.settings.smtp_concurrency, 1)
        limit = RateLimit(rate)
        senders = [
            asyncio.create_task(self._sender(queue, transport, limit)) for _ in range(concurrency)
        ]
        finished = asyncio.Event()
        recorder = asyncio.create_task(self._recorder(finished))
        try:
            await self._produce(queue, batch_size)
        finally:
            for _ in senders:
                await queue.put(None)
            await asyncio.gather(*senders)
            finished.set()
            self._flush.set()
            await recorder
            await transport.close()
        if self._unexpected:  # left `sending`: whether they went out is unknown; never resend
            raise self._unexpected[0]

    async def _produce(self, queue: asyncio.Queue[_Job | None], batch_size: int) -> None:
        """Claim whenever the queue is half empty, only as much as fits: what is claimed and
        not yet handed to a sender never exceeds one batch, which bounds a crash's doubt."""
        after = 0
        while True:
            while queue.qsize() > batch_size // 2:
                await asyncio.sleep(0.005)
            batch = await asyncio.to_thread(self._claim, after, batch_size - queue.qsize())
            if batch is None:
                return
            after, rows, threads = batch
            for row in rows:
                earlier = threads.get(row["case_id"], []) if row["kind"] == "reminder" else []
                await queue.put(_Job(row, earlier))

    async def _sender(
        self, queue: asyncio.Queue[_Job | None], transport: Transport, limit: RateLimit
    ) -> None:
        """Build each email just before sending it: building between sends, not a batch at a
        time, keeps the event loop answering the server (and the Date header current)."""
        while (job := await queue.get()) is not None:
            message_id = job.row["id"]
            try:
                email = self.composer.compose(job.row, job.earlier)
            except DeliveryError as exc:  # the address, or no body (NotRendered)
                reason = getattr(exc, "reason", "invalid_address")
                self._done(_Result(message_id, FAILED, reason, str(exc)))
                continue
            except Exception as exc:  # a bug: the run stops, leaving the message in doubt
                log.exception("message %s: unexpected error while building it", message_id)
                self._unexpected.append(exc)
                continue
            await limit.wait()
            try:
                await transport.send(email)
            except SEND_FAILURES as exc:
                self._done(self._failure(message_id, exc, job.row["attempts"]))
            except Exception as exc:  # a bug: record nothing, so the message ends in doubt
                log.exception("message %s: unexpected error while sending", message_id)
                self._unexpected.append(exc)
            else:
                self._done(_Result(message_id, SENT))

    def _done(self, result: _Result) -> None:
        self._pending.append(result)
        if len(self._pending) >= FLUSH_SIZE:
            self._flush.set()

    async def _recorder(self, finished: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), FLUSH_EVERY)
            self._flush.clear()
            results, self._pending = self._pending, []
            if results:
                await asyncio.to_thread(self._record, results)
            if finished.is_set() and not self._pending:
                return

    def _failure(self, message_id: int, exc: BaseException, attempts: int) -> _Result:
        """Bounced on a 5xx to the recipient or the data; else retried with backoff."""
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            exc = exc.recipients[0]
        if isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600:
            reason = f"smtp {exc.code} {exc.message}"
            if isinstance(exc, aiosmtplib.SMTPSenderRefused):  # our From, not their address
                return _Result(message_id, FAILED, "sender_refused: " + reason, reason)
            log.warning("message %s bounced: %s", message_id, reason)
            return _Result(message_id, BOUNCED, reason, reason)
        error = f"{type(exc).__name__}: {exc}"
        log.warning("message %s not delivered (attempt %s): %s", message_id, attempts, error)
        if attempts >= MAX_ATTEMPTS:
            return _Result(message_id, FAILED, "attempts_exhausted", error)
        wait = min(
            self.settings.delivery_retry_seconds * 2 ** (attempts - 1),
            self.settings.delivery_retry_cap_seconds,
        )
        retry_at = self.clock() + timedelta(seconds=wait)
        return _Result(message_id, PLANNED, "retrying", error, next_attempt_at=retry_at)

    # --- database work, run in a thread ------------------------------------------------------

    def _claim(self, after: int, size: int) -> tuple[int, list[Any], dict[int, list[str]]] | None:
        """Re-check and claim the next due messages after id `after`; None when none is due.

        Returns the last id looked at, the claimed rows (ready to build emails from) and, per
        case, the Message-IDs of its reminders already sent (the thread to reply in).
        The statements are built once per delivery (`_Statements`): only their parameters
        change from claim to claim.
        """
        now = self.clock()
        sql = self._sql
        with self.engine.begin() as conn:
            take_write_lock(conn)
            params = {"now": now, "after": after, "size": size}
            if conn.dialect.name == "postgresql":  # and lock their customers (see the query)
                found = conn.execute(sql.due_and_customers, params).all()
            else:  # claims take turns: nothing to lock
                found = [(message_id, False) for message_id in conn.scalars(sql.due, params)]
            if not found:
                return None
            last = found[-1][0]
            ids = [message_id for message_id, _ in found]
            busy = {message_id for message_id, elsewhere in found if elsewhere}
            if busy:
                _count(self.report.deferred, ["same_customer"] * len(busy))
                ids = [message_id for message_id in ids if message_id not in busy]
            ready = self._hold_back(conn, ids, now)
            if not ready:
                return last, [], {}
            self._name(conn, ready)
            lease = now + timedelta(seconds=self.settings.delivery_lease_seconds)
            claimed = run_move(
                conn,
                sql.claim,
                {"ids": [row["id"] for row in ready], "worker": self.worker, "lease": lease},
                PLANNED,
                SENDING,
                now,
                self.worker,
            )
            # The rows were read in this transaction and are ours (SQLite: the write lock;
            # PostgreSQL: locked FOR UPDATE by `due_and_customers`): only the claim changed them.
            taken = {message_id for message_id, _ in claimed}
            rows = [row | {"attempts": row["attempts"] + 1} for row in ready if row["id"] in taken]
            reminders = {
                row["case_id"] for row in rows if row["kind"] == "reminder" and row["thread"]
            }
            threads = _threads(conn, sql, reminders)
        return last, rows, threads

    def _hold_back(self, conn: Connection, ids: Sequence[int], now: datetime) -> list[dict]:
        """The rows (ready to build emails from) that may be claimed now.

        Suppresses the ones that must not go out (with the reason), counts the ones the cap
        or another message of their customer holds back, and defers the ones outside their
        quiet-hours window to its next opening. One query reads the rows with these verdicts.
        """
        candidates = conn.execute(self._sql.candidates, {"ids": list(ids)}).mappings().all()
        doomed = [row["id"] for row in candidates if row["suppress"]]
        if doomed:
            params = {"ids": doomed}
            suppressed = run_move(conn, self._sql.suppress, params, PLANNED, SUPPRESSED, now,
                                  self.worker)  # fmt: skip
            _count(self.report.suppressed, [str(reason) for _, reason in suppressed])
        rest = [row for row in candidates if not row["suppress"]]
        later = later_in_batch(rest)  # a suppressed message holds back no other
        ready = []
        for row in rest:
            wait = row["wait"] or ("same_customer" if row["id"] in later else None)
            if wait:
                _count(self.report.deferred, [wait])
            else:
                ready.append(dict(row))
        quiet = quiet_deferrals(ready, now, self.contact.quiet_hours)
        by_opening: dict[datetime, list[int]] = {}
        for message_id, opens in quiet.items():
            by_opening.setdefault(opens, []).append(message_id)
        for opens, ids_then in by_opening.items():  # one UPDATE per timezone, in effect
            move(conn, MESSAGES.c.id.in_(ids_then), PLANNED, PLANNED, "quiet_hours", now,
                 self.worker, not_before=opens)  # fmt: skip
        _count(self.report.deferred, ["quiet_hours"] * len(quiet))
        return [row for row in ready if row["id"] not in quiet]

    def _name(self, conn: Connection, rows: list[dict]) -> None:
        """Give each row its Message-ID before it is claimed, where it has none yet.

        A message in doubt after a crash must show the Message-ID it went out with, so the
        operator can look it up in the mail server's log; the same id then threads later stages.
        """
        unnamed = [row for row in rows if not row["message_id_header"]]
        for row in unnamed:
            row["message_id_header"] = self.composer.message_id(row)
        if unnamed:
            named = [{"n_id": row["id"], "n_header": row["message_id_header"]} for row in unnamed]
            conn.execute(_NAME, named)

    def _record(self, results: list[_Result]) -> None:
        """Write a group of results in one transaction, and their side effects.

        Only messages this worker still holds are written (`sending`, or `unknown` if another
        worker judged the lease expired: then the result settles the doubt). The sent ones,
        nearly all, move together in one set-based statement (and its log); `sent_at` is
        when their acceptance is recorded, at most a flush interval after the server's answer.
        """
        now = self.clock()
        sent = [result.message_id for result in results if result.status == SENT]
        others = {result.message_id: result for result in results if result.status != SENT}
        with self.engine.begin() as conn:
            take_write_lock(conn)
            recorded = self._record_sent(conn, sent, now)
            self._record_others(conn, others, now)
        _warn_lost(set(sent) - set(recorded))
        self.report.sent += len(recorded)

    def _record_sent(self, conn: Connection, ids: list[int], now: datetime) -> list[int]:
        """Move the sent messages this worker holds to `sent`; returns the ids moved.
        A held message is `sending`, or `unknown` when its lease was judged expired."""
        moved: list[int] = []
        params = {"worker": self.worker, "sent_at": now}
        for held in (SENDING, IN_DOUBT):
            if not ids:
                break
            statement = self._sql.sent[held]
            done = run_move(conn, statement, params | {"ids": ids}, held, SENT, now, self.worker)
            moved += [message_id for message_id, _ in done]
            ids = sorted(set(ids) - set(moved))
        return moved

    def _record_others(self, conn: Connection, by_id: dict[int, _Result], now: datetime) -> None:
        """Write the failures, bounces and retries this worker holds, each with its own values,
        and their side effects."""
        if not by_id:
            return
        held = conn.execute(_HELD, {"ids": list(by_id), "worker": self.worker}).all()
        _warn_lost(set(by_id) - {mid for mid, _ in held})
        if not held:
            return
        if conn.dialect.name == "postgresql":  # each result and its log: one statement
            logged = {"log_at": now, "log_worker": self.worker}
            conn.execute(
                _RESULT_LOGGED,
                [self._params(by_id[mid]) | logged | {"b_old": old} for mid, old in held],
            )
        else:
            conn.execute(_RESULT_UPDATE, [self._params(by_id[mid]) for mid, _ in held])
            log_moves(
                conn,
                [(mid, old, by_id[mid].status, by_id[mid].reason) for mid, old in held],
                now,
                self.worker,
            )
        bounced = [mid for mid, _ in held if by_id[mid].status == BOUNCED]
        if bounced:
            self._bounce(conn, bounced, now)
        for mid, _ in held:
            self._tally(by_id[mid])

    def _params(self, result: _Result) -> dict[str, Any]:
        done = result.status in (FAILED, BOUNCED)
        return {
            "b_id": result.message_id,
            "b_status": result.status,
            "b_reason": result.reason,
            "b_error": result.error,
            "b_next": result.next_attempt_at,
            "b_claimed_by": self.worker if done else None,
        }

    def _bounce(self, conn: Connection, ids: list[int], now: datetime) -> None:
        """Block the bounced addresses and put their cases in the operator queue."""
        addresses = conn.scalars(select(MESSAGES.c.to_address).where(MESSAGES.c.id.in_(ids)))
        block(conn, "address", addresses, "bounced", "permanent SMTP failure", now)
        cases = select(MESSAGES.c.case_id, MESSAGES.c.customer_id).where(MESSAGES.c.id.in_(ids))
        queue_cases(conn, cases.distinct(), "bounced", self.as_of)

    def _tally(self, result: _Result) -> None:
        if result.status == PLANNED:
            self.report.retrying += 1
        elif result.status == BOUNCED:
            self.report.bounced += 1
        else:
            _count(self.report.failed, [str(result.reason).split(":")[0]])


_NAME = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("n_id"), MESSAGES.c.message_id_header.is_(None))
    .values(message_id_header=bindparam("n_header"))
)
_RESULT_UPDATE = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        status_reason=bindparam("b_reason"),
        last_error=func.coalesce(bindparam("b_error", type_=String), MESSAGES.c.last_error),
        sent_at=None,
        sent_on=None,
        next_attempt_at=bindparam("b_next", type_=MESSAGES.c.next_attempt_at.type),
        claimed_by=bindparam("b_claimed_by", type_=String),
        lease_until=None,
    )
)
_RESULTS_MOVED = _RESULT_UPDATE.returning(
    MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.status_reason
).cte("moved")
# PostgreSQL: `WITH moved AS (UPDATE … RETURNING) INSERT INTO message_events SELECT … FROM
# moved`, run for each result: the result and its logged move in one statement.
_RESULT_LOGGED = (
    insert(EVENTS)
    .from_select(
        EVENT_COLUMNS,
        select(
            _RESULTS_MOVED.c.id,
            bindparam("log_at", type_=EVENTS.c.at.type),
            bindparam("b_old", type_=String),
            _RESULTS_MOVED.c.status,
            _RESULTS_MOVED.c.status_reason,
            bindparam("log_worker", type_=String),
        ),
    )
    .add_cte(_RESULTS_MOVED, nest_here=True)
)


def _warn_lost(ids: set[int]) -> None:
    if ids:  # settled by an operator meanwhile: the log keeps what happened
        log.warning("results for %s not recorded: no longer held by us", sorted(ids))


_HELD = (
    select(MESSAGES.c.id, MESSAGES.c.status)
    .where(
        in_ids(MESSAGES.c.id),
        MESSAGES.c.claimed_by == bindparam("worker", type_=String),
        MESSAGES.c.status.in_((SENDING, IN_DOUBT)),
    )
    .with_for_update()
)


class _Statements:
    """The claim's statements, built once per delivery (its day and contact rules are fixed):
    each claim runs them with new parameters, and SQLAlchemy reuses their compiled form."""

    def __init__(self, as_of: date, contact: Contact):
        now = bindparam("now", type_=MESSAGES.c.not_before.type)
        self.due = (
            select(MESSAGES.c.id)
            .where(_due(as_of, now), MESSAGES.c.id > bindparam("after", type_=Integer))
            .order_by(MESSAGES.c.id)
            .limit(bindparam("size", type_=Integer))
            .with_for_update(skip_locked=True)
        )
        self.due_and_customers = _due_and_customers(self.due)
        reason = _suppress_reason(as_of)
        self.suppress = move_statement(
            and_(in_ids(MESSAGES.c.id), reason.is_not(None)), PLANNED, SUPPRESSED, reason
        )
        wait = must_wait(as_of, contact.cap).label("wait")
        earlier = MESSAGES.alias("earlier")
        thread = (  # whether the case has sent reminders (most first reminders: none)
            select(earlier.c.id)
            .where(
                earlier.c.case_id == MESSAGES.c.case_id,
                earlier.c.kind == "reminder",
                earlier.c.status == SENT,
                earlier.c.message_id_header.is_not(None),
            )
            .exists()
            .label("thread")
        )
        self.candidates = (
            select(
                MESSAGES.c.id,
                MESSAGES.c.key,
                MESSAGES.c.kind,
                MESSAGES.c.case_id,
                MESSAGES.c.customer_id,
                MESSAGES.c.to_address,
                MESSAGES.c.subject,
                CONTENTS.c.body_mime,
                MESSAGES.c.message_id_header,
                MESSAGES.c.attempts,
                CUSTOMERS.c.name.label("customer_name"),
                CUSTOMERS.c.timezone,
                _suppress_reason(as_of, customer_joined=True).label("suppress"),
                wait,
                thread,
            )
            .select_from(
                MESSAGES.outerjoin(
                    CUSTOMERS, CUSTOMERS.c.customer_id == MESSAGES.c.customer_id
                ).outerjoin(CONTENTS, CONTENTS.c.message_id == MESSAGES.c.id)
            )
            .where(in_ids(MESSAGES.c.id), MESSAGES.c.status == PLANNED)
            .order_by(MESSAGES.c.id)
        )
        self.claim = move_statement(
            in_ids(MESSAGES.c.id),
            PLANNED,
            SENDING,
            None,
            claimed_by=bindparam("worker", type_=String),
            lease_until=bindparam("lease", type_=MESSAGES.c.lease_until.type),
            attempts=MESSAGES.c.attempts + 1,
        )
        held_by_us = and_(
            in_ids(MESSAGES.c.id), MESSAGES.c.claimed_by == bindparam("worker", type_=String)
        )
        self.sent = {  # by the status a held message is in: sending, or unknown
            held: move_statement(
                held_by_us,
                held,
                SENT,
                None,
                sent_at=bindparam("sent_at", type_=MESSAGES.c.sent_at.type),
                sent_on=as_of,
                next_attempt_at=None,
                lease_until=None,
            )
            for held in (SENDING, IN_DOUBT)
        }
        self.threads = (
            select(MESSAGES.c.case_id, MESSAGES.c.message_id_header)
            .where(
                in_ids(MESSAGES.c.case_id, "cases"),
                MESSAGES.c.kind == "reminder",
                MESSAGES.c.status == SENT,
                MESSAGES.c.message_id_header.is_not(None),
            )
            .order_by(MESSAGES.c.sent_at, MESSAGES.c.id)
        )


def _due_and_customers(due: Select[Any]) -> Select[Any]:
    """PostgreSQL: the due messages (locked, SKIP LOCKED), each with whether its customer is
    held by another worker's claim, after locking the customers of the rest, in one statement.

    Without the customer lock, two workers claiming at the same moment could each see the
    other's message to a customer as still planned, and send both: one over the cap. A
    message whose customer another worker holds waits for a later pass. SKIP LOCKED never
    waits, so no two claims can deadlock. On SQLite claims take turns and need no lock.
    """
    found = (
        due.with_only_columns(MESSAGES.c.id, MESSAGES.c.customer_id, MESSAGES.c.kind)
        .with_for_update(skip_locked=True, of=MESSAGES)
        .cte("found")
    )
    to_customers = found.c.kind != INTERNAL
    locked = (
        select(CUSTOMERS.c.customer_id)
        .where(CUSTOMERS.c.customer_id.in_(select(found.c.customer_id).where(to_customers)))
        .with_for_update(skip_locked=True, of=CUSTOMERS)
        .cte("locked")
    )
    known = select(CUSTOMERS.c.customer_id).where(CUSTOMERS.c.customer_id == found.c.customer_id)
    elsewhere = and_(
        to_customers,
        known.exists(),
        found.c.customer_id.not_in(select(locked.c.customer_id)),
    )
    return select(found.c.id, elsewhere.label("elsewhere")).order_by(found.c.id)


def _suppress_reason(as_of: date, customer_joined: bool = False) -> ColumnElement[str | None]:
    """Why the (correlated) planned message must not go out now, or NULL: the first rule
    that holds names the reason. With `customer_joined`, the statement joins the message's
    customer and the flag is read from that row."""
    # Lookups by key: an `IN (SELECT …)` list would read every customer and every case on
    # each claim, and so does PostgreSQL's hashed form of a correlated EXISTS on customers.
    do_not_contact = (
        CUSTOMERS.c.do_not_contact.is_(True)
        if customer_joined
        else select(CUSTOMERS.c.customer_id)
        .where(CUSTOMERS.c.customer_id == MESSAGES.c.customer_id, CUSTOMERS.c.do_not_contact)
        .correlate(MESSAGES)
        .exists()
    )
    case_status = (
        select(CASES.c.status)
        .where(CASES.c.id == MESSAGES.c.case_id)
        .correlate(MESSAGES)
        .scalar_subquery()
    )
    case_state = literal("case_") + case_status
    case_on_hold = case_status.in_(PAUSED_STATES | CLOSED)
    settled_reason = case((_items_owed(as_of, disputed=True), "disputed"), else_="paid_before_send")
    return case(
        (and_(to_customer(), do_not_contact), "do_not_contact"),
        (and_(to_customer(), opted_out()), "opted_out"),
        (address_bounced(), "address_bounced"),
        (and_(to_customer(), case_on_hold), case_state),
        (~_items_owed(as_of, disputed=False), settled_reason),
        else_=None,
    )


def _due(as_of: date, now: datetime | ColumnElement[Any]) -> ColumnElement[bool]:
    return and_(
        MESSAGES.c.status == PLANNED,
        MESSAGES.c.subject.is_not(None),
        MESSAGES.c.planned_on <= as_of,
        or_(MESSAGES.c.not_before.is_(None), MESSAGES.c.not_before <= now),
        or_(MESSAGES.c.next_attempt_at.is_(None), MESSAGES.c.next_attempt_at <= now),
    )


def _items_owed(as_of: date, disputed: bool) -> Exists:
    """Whether the message (correlated) asks for an invoice still owed as of `as_of`.

    A customer message's items are its own; an internal message's are those of its case.
    `disputed` picks owed invoices under dispute, or else the ones a reminder may ask for.
    """
    source = MESSAGES.alias("item_source")
    dispute = INVOICES.c.status == "disputed"
    return (
        select(ITEMS.c.invoice_id)
        .select_from(
            ITEMS.join(source, source.c.id == ITEMS.c.message_id).join(
                INVOICES, INVOICES.c.invoice_id == ITEMS.c.invoice_id
            )
        )
        .where(
            source.c.case_id == MESSAGES.c.case_id,
            or_(source.c.id == MESSAGES.c.id, MESSAGES.c.kind == "internal"),
            INVOICES.c.status.not_in(("paid", "void")),
            INVOICES.c.amount - _settled(as_of) > 0,
            dispute if disputed else ~dispute,
        )
        .exists()
    )


def _settled(as_of: date) -> ColumnElement[Any]:
    """Succeeded payments less refunds on the (correlated) invoice, up to `as_of`."""
    return (
        select(settled_amount())
        .where(
            PAYMENTS.c.invoice_id == INVOICES.c.invoice_id,
            PAYMENTS.c.attempted_on <= as_of,
            settling(),
        )
        .scalar_subquery()
    )


def _threads(conn: Connection, sql: _Statements, case_ids: set[int]) -> dict[int, list[str]]:
    """Per case, the Message-IDs of its reminders sent so far, oldest first: what a later
    stage replies to (the latest) and references (all), so they show as one conversation.
    Asked only for the cases the claim found with a sent reminder (`_Statements.candidates`)."""
    if not case_ids:
        return {}
    threads: dict[int, list[str]] = {}
    for case_id, message_id_header in conn.execute(sql.threads, {"cases": list(case_ids)}):
        threads.setdefault(case_id, []).append(message_id_header)
    return threads


def _count(counts: dict[str, int], reasons: Sequence[str]) -> None:
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
