"""Delivery workers: who claims (`worker_name`), the processes of `deliver --workers N`, and
recovery from a worker that stopped while holding claims.

A worker claims messages under a lease (`claimed_by`, `lease_until`). One that dies between
claiming and recording leaves them `sending`; the next delivery finds them with an expired
lease and moves them to `unknown`: reported and queued for an operator, never resent.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime
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
