"""Delivery workers: who claims (`worker_name`), the processes of `deliver --workers N`, and
recovery from a worker that stopped while holding claims.

A worker claims messages under a lease (`claimed_by`, `lease_until`). One that dies between
claiming and recording leaves them `sending`; the next delivery (or `collectflow in-doubt`)
moves them to `unknown`: reported and queued for an operator, never resent. It knows at once
when the claimer was a process of this host that no longer exists (`worker_name` holds the
host and pid), and otherwise when the lease has expired.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, literal, select

from collectflow.flows.cases.queue import queue_cases
from collectflow.flows.mail.outbox import IN_DOUBT, SENDING, move, take_write_lock
from collectflow.models import Message

log = logging.getLogger(__name__)

MESSAGES = Message.__table__

T = TypeVar("T")


def worker_name() -> str:
    """Who claims: host, process and a random tag, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_workers(names: Iterable[str]) -> list[str]:
    """Of these `worker_name`s, the ones of this host whose process no longer runs.

    A worker on another host, or one whose pid is taken again by another process, is not
    known dead: its claims wait for their lease to expire.
    """
    host = socket.gethostname()
    dead = []
    for name in names:
        claim_host, pid, _ = [*name.rsplit(":", 2), "", ""][:3]
        if claim_host == host and pid.isdigit() and not _running(int(pid)):
            dead.append(name)
    return dead


def _running(pid: int) -> bool:
    """Whether a process `pid` exists and has not exited (a zombie, killed and not yet
    reaped by its parent, has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): it exists, so it runs
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def in_processes(work: Callable[..., T], args: tuple[Any, ...], count: int) -> list[T]:
    """Run `work(*args)` in `count` worker processes at once; their results, in order.

    `work` must be a module-level function: it is pickled by name, and its module is what
    the fork server imports once for all workers (`worker_context`).
    """
    with ProcessPoolExecutor(count, mp_context=worker_context(work.__module__)) as pool:
        futures = [pool.submit(work, *args) for _ in range(count)]
        return [future.result() for future in futures]


def worker_context(preload: str) -> multiprocessing.context.BaseContext:
    """Where worker processes come from: clean interpreters, never a fork of this process
    (its threads, Prefect's included, and its sockets must not be copied).

    Where available, a fork server that has imported the module `preload` once forks them:
    importing Collectflow anew in each worker costs seconds of CPU; otherwise each is spawned.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    return context


def recheck_expired_leases(engine: Engine, as_of: date, now: datetime, worker: str) -> list[int]:
    """Move messages left `sending` by a stopped worker to `unknown`, and queue their cases:
    those whose claimer is a dead process of this host, at once, and the rest of those past
    their lease. Returns their ids.

    Their worker stopped between claiming and recording: each may or may not have reached
    the mail server. Resending blindly could send twice, so they wait for an operator.
    """
    with engine.begin() as conn:
        take_write_lock(conn)
        claimers = select(MESSAGES.c.claimed_by).where(MESSAGES.c.status == SENDING).distinct()
        dead = dead_workers(name for name in conn.scalars(claimers) if name)
        ids = []
        for gone, why in (
            (MESSAGES.c.claimed_by.in_(dead), "its process is gone"),
            (MESSAGES.c.lease_until < now, "lease expired"),
        ):
            reason = literal(f"in flight when its worker stopped ({why}): ") + func.coalesce(
                MESSAGES.c.claimed_by, ""
            )
            ids += move(conn, gone, SENDING, IN_DOUBT, reason, now, worker)
        if ids:
            log.warning("%d message(s) in doubt, queued for an operator: %s", len(ids), ids)
            cases = select(MESSAGES.c.case_id, MESSAGES.c.customer_id).where(MESSAGES.c.id.in_(ids))
            queue_cases(conn, cases.distinct(), "delivery_in_doubt", as_of)
    return ids
