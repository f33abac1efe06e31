"""The customer page's throughput: GETs of valid answer links against `collectflow serve`.

    .venv/bin/python bench/page.py [--customers 300] [--requests 6000] [--concurrency 32]
                                   [--database-url URL] [--json] [--keep]

What it does:
1. writes the demo ledger (flows/ledger/demo.py) for today into a temporary folder, imports
   it into a fresh database (a SQLite file there, unless `--database-url`: **its Collectflow
   tables are dropped and recreated**) and runs today's daily steps without delivery, so the
   reminders due today exist with their invoices;
2. signs an answer link for each of them, as render does;
3. starts `collectflow serve` on a free local port, in its own process (one uvicorn worker,
   as the command runs it), and waits until it answers;
4. sends `--requests` GETs of those links, cycling through them, from `--concurrency`
   concurrent connections of one httpx AsyncClient in this process, after a warm-up of 300
   requests, and checks every answer is a 200 page.

It prints the requests per second over the timed requests and the latency percentiles, and
the server's CPU seconds per request (on a 2-core machine the client's own work shares the
cores, so the CPU time says what the page itself costs). The target is at least 200
requests per second on SQLite (issue 17).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = 200.0
WARM_UP = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="collectflow-bench-page-"))
    try:
        result = run(args, folder)
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)


def run(args: argparse.Namespace, folder: Path) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    os.environ.update(
        COLLECTFLOW_DATABASE_URL=args.database_url or f"sqlite:///{folder / 'bench.db'}",
        COLLECTFLOW_OUTBOX=str(folder / "outbox"),
        COLLECTFLOW_EXPORTS=str(folder / "exports"),
        COLLECTFLOW_LINK_SECRET=secrets.token_urlsafe(32),
        COLLECTFLOW_PUBLIC_URL=base,
    )
    links = reminders_with_links(folder, base, args.customers)
    log = (folder / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "collectflow"), "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(base, server)
        cpu_before = process_cpu(server.pid)
        latencies, seconds = asyncio.run(load(links, args.requests, args.concurrency))
        cpu = process_cpu(server.pid) - cpu_before
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    ordered = sorted(latencies)
    return {
        "database": os.environ["COLLECTFLOW_DATABASE_URL"].split(":", 1)[0],
        "links": len(links),
        "requests": len(latencies),
        "concurrency": args.concurrency,
        "seconds": round(seconds, 3),
        "requests_per_second": round(len(latencies) / seconds, 1),
        "latency_ms": {
            "p50": round(statistics.median(ordered) * 1000, 2),
            "p95": round(ordered[int(len(ordered) * 0.95)] * 1000, 2),
            "p99": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
        },
        "server_cpu_ms_per_request": round(cpu / len(latencies) * 1000, 3),
        "target_requests_per_second": TARGET,
    }


def reminders_with_links(folder: Path, base: str, customers: int) -> list[str]:
    """Import the demo ledger, run today's steps, and sign a link for each customer message."""
    from collectflow.flows.config import get_settings
    from collectflow.flows.feedback.links import expiry, page_url, signer
    from collectflow.flows.ledger.csv_import import import_ledger
    from collectflow.flows.ledger.demo import write_demo_ledger
    from collectflow.flows.pipeline import business_today, open_run, run_day
    from collectflow.models import Message, drop_db, init_db, make_engine

    settings = get_settings()
    today = business_today(settings)
    engine = make_engine(settings.database_url)
    drop_db(engine)
    init_db(engine)
    write_demo_ledger(folder / "ledger", today, customers=customers)
    import_ledger(engine, folder / "ledger", settings)
    with open_run(settings) as ctx:
        for offset in (2, 1, 0):  # a few days, so every kind of reminder is due
            run_day(ctx, today - timedelta(days=offset), skip_delivery=True)
    messages = Message.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(messages.c.id, messages.c.customer_id).where(messages.c.kind != "internal")
        ).all()
    engine.dispose()
    sign = signer(settings)
    until = expiry(today, 60)
    return [page_url(base, sign.sign(row.id, row.customer_id, until)) for row in rows]


async def load(links: list[str], requests: int, concurrency: int) -> tuple[list[float], float]:
    """Time `requests` GETs from `concurrency` connections; every answer must be a 200."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await fetch_all(client, links, WARM_UP, concurrency)
        started = time.perf_counter()
        latencies = await fetch_all(client, links, requests, concurrency)
        return latencies, time.perf_counter() - started


async def fetch_all(
    client: httpx.AsyncClient, links: list[str], requests: int, concurrency: int
) -> list[float]:
    latencies: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for index in queue:
            started = time.perf_counter()
            response = await client.get(links[index % len(links)])
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"GET answered {response.status_code}: {response.text[:300]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"collectflow serve exited with {server.returncode}")
        try:
            httpx.get(f"{base}/robots.txt", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("collectflow serve did not answer within 60 s")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_result(result: dict) -> None:
    met = "met" if result["requests_per_second"] >= TARGET else "MISSED"
    latency = result["latency_ms"]
    print(
        f"customer page on {result['database']}: {result['requests']} GETs of "
        f"{result['links']} valid links, {result['concurrency']} concurrent connections\n"
        f"  {result['requests_per_second']} requests/s over {result['seconds']} s "
        f"(target {TARGET:g}: {met})\n"
        f"  latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms\n"
        f"  server CPU {result['server_cpu_ms_per_request']} ms per request"
    )


if __name__ == "__main__":
    main()
