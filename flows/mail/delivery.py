"""One worker's delivery: a small pipeline in one event loop that sends what is due, once.

    claim (DB, in a thread) ──► queue ──► N senders (pooled connections) ──► recorder (DB)

The claim (`mail.claims`) holds back what the contact rules defer (quiet hours, the cap) and
marks the rest `sending` under this worker's lease. Senders build each email just before
sending it (`mail.compose`, threaded under the case's earlier reminders: `mail.threads`) and
hand it to the transport (`mail.transports`) at the pace of the rate limit
(`mail.ratelimit`). The recorder writes results every FLUSH_EVERY seconds, so a crash leaves
unconfirmed only what was claimed and not yet recorded (`mail.workers` recovers those); a
failure is bounced, failed or retried as `mail.retry` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select

from collectflow.flows.cases.queue import queue_cases
from collectflow.flows.config import Settings
from collectflow.flows.errors import DeliveryError
from collectflow.flows.mail.claims import (
    ASSIGN_MESSAGE_ID,
    HELD,
    WRITE_RESULT,
    WRITE_RESULT_LOGGED,
    ClaimStatements,
    Result,
    result_params,
)
from collectflow.flows.mail.compose import Composer
from collectflow.flows.mail.contact import block, later_in_batch, quiet_deferrals
from collectflow.flows.mail.outbox import (
    BOUNCED,
    FAILED,
    IN_DOUBT,
    PLANNED,
    SENDING,
    SENT,
    SUPPRESSED,
    log_moves,
    move,
    run_move,
    take_write_lock,
)
from collectflow.flows.mail.ratelimit import RateLimit
from collectflow.flows.mail.retry import SEND_FAILURES, failure
from collectflow.flows.mail.threads import earlier_message_ids
from collectflow.flows.mail.transports import Transport, transport_for
from collectflow.flows.policy.contact import Contact
from collectflow.models import Message

log = logging.getLogger(__name__)

MESSAGES = Message.__table__

FLUSH_EVERY = 0.2  # seconds between result writes: bounds what a crash leaves in doubt
FLUSH_SIZE = 100

Clock = Callable[[], datetime]


@dataclass
class DeliveryReport:
    """What one delivery did. `retrying`: transient failures waiting for their backoff;
    `deferred`: held back by a contact rule (quiet hours, cap); `in_doubt`: ids of messages
    now `unknown` and queued for an operator: found in flight from a worker that stopped, or
    whose server reply was lost after the end of DATA."""

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


@dataclass(frozen=True)
class _Job:
    """A claimed message waiting for a sender: its row, and the Message-IDs it replies to."""

    row: dict[str, Any]
    earlier: Sequence[str]


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
        self._sql = ClaimStatements(as_of, contact)
        self.report = DeliveryReport()
        self._pending: list[Result] = []
        self._flush = asyncio.Event()

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
            except DeliveryError as exc:  # the address, the encoding, or no body (NotRendered)
                reason = getattr(exc, "reason", "invalid_address")
                self._done(Result(message_id, FAILED, reason, str(exc)))
                continue
            except Exception as exc:  # a bug, but nothing went out: this message fails alone
                log.exception("message %s: unexpected error while building it", message_id)
                self._done(Result(message_id, FAILED, "compose_error", _described(exc)))
                continue
            await limit.wait()
            try:
                await transport.send(email)
            except SEND_FAILURES as exc:
                attempts = job.row["attempts"]
                self._done(failure(message_id, exc, attempts, self.settings, self.clock))
            except Exception as exc:  # a bug mid-send: whether it went out is unknown
                log.exception("message %s: unexpected error while sending", message_id)
                self._done(Result(message_id, IN_DOUBT, "in_doubt: unexpected error while "
                                  "sending", _described(exc)))  # fmt: skip
            else:
                self._done(Result(message_id, SENT))

    def _done(self, result: Result) -> None:
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

    # --- database work, run in a thread ------------------------------------------------------

    def _claim(self, after: int, size: int) -> tuple[int, list[Any], dict[int, list[str]]] | None:
        """Re-check and claim the next due messages after id `after`; None when none is due.

        Returns the last id looked at, the claimed rows (ready to build emails from) and, per
        case, the Message-IDs of its reminders already sent (the thread to reply in).
        The statements are built once per delivery (`ClaimStatements`): only their parameters
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
            threads = earlier_message_ids(conn, reminders)
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
            conn.execute(ASSIGN_MESSAGE_ID, named)

    def _record(self, results: list[Result]) -> None:
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

    def _record_others(self, conn: Connection, by_id: dict[int, Result], now: datetime) -> None:
        """Write the failures, bounces and retries this worker holds, each with its own values,
        and their side effects."""
        if not by_id:
            return
        held = conn.execute(HELD, {"ids": list(by_id), "worker": self.worker}).all()
        _warn_lost(set(by_id) - {mid for mid, _ in held})
        if not held:
            return
        if conn.dialect.name == "postgresql":  # each result and its log: one statement
            logged = {"log_at": now, "log_worker": self.worker}
            rows = [
                result_params(by_id[mid], self.worker) | logged | {"b_old": old}
                for mid, old in held
            ]
            conn.execute(WRITE_RESULT_LOGGED, rows)
        else:
            conn.execute(WRITE_RESULT, [result_params(by_id[mid], self.worker) for mid, _ in held])
            log_moves(
                conn,
                [(mid, old, by_id[mid].status, by_id[mid].reason) for mid, old in held],
                now,
                self.worker,
            )
        bounced = [mid for mid, _ in held if by_id[mid].status == BOUNCED]
        if bounced:
            self._bounce(conn, bounced, now)
        doubtful = [mid for mid, _ in held if by_id[mid].status == IN_DOUBT]
        if doubtful:
            cases = select(MESSAGES.c.case_id, MESSAGES.c.customer_id)
            cases = cases.where(MESSAGES.c.id.in_(doubtful)).distinct()
            queue_cases(conn, cases, "delivery_in_doubt", self.as_of)
        for mid, _ in held:
            self._tally(by_id[mid])

    def _bounce(self, conn: Connection, ids: list[int], now: datetime) -> None:
        """Block the bounced addresses and put their cases in the operator queue."""
        addresses = conn.scalars(select(MESSAGES.c.to_address).where(MESSAGES.c.id.in_(ids)))
        block(conn, "address", addresses, "bounced", "permanent SMTP failure", now)
        cases = select(MESSAGES.c.case_id, MESSAGES.c.customer_id).where(MESSAGES.c.id.in_(ids))
        queue_cases(conn, cases.distinct(), "bounced", self.as_of)

    def _tally(self, result: Result) -> None:
        if result.status == PLANNED:
            self.report.retrying += 1
        elif result.status == BOUNCED:
            self.report.bounced += 1
        elif result.status == IN_DOUBT:
            self.report.in_doubt.append(result.message_id)
        else:
            _count(self.report.failed, [str(result.reason).split(":")[0]])


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _warn_lost(ids: set[int]) -> None:
    if ids:  # settled by an operator meanwhile: the log keeps what happened
        log.warning("results for %s not recorded: no longer held by us", sorted(ids))


def _count(counts: dict[str, int], reasons: Sequence[str]) -> None:
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
