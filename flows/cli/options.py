"""What every command module shares: consoles, common options, error handling, JSON output.

Command modules import from here, never from the app module, so the app can import them all
without a cycle. Exit codes: 0 done, 1 failed, 2 bad input or usage.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from collectflow.flows.config import Settings
from collectflow.flows.errors import CollectflowError

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DateOption = Annotated[date | None, typer.Option(formats=["%Y-%m-%d"])]


def handles_errors(command: F) -> F:
    """Turn our errors into a clear message and exit code 2; anything else into exit 1."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _no_prefect_traceback_for_our_errors():
                return command(*args, **kwargs)
        except (CollectflowError, ValidationError) as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from exc
        except typer.Exit:
            raise
        except Exception as exc:
            err.print(f"[bold red]failed:[/] {type(exc).__name__}: {exc}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


class _OurErrorsUnlogged(logging.Filter):
    """Drops Prefect's record of a flow or task failing with one of our errors: the command
    prints that error itself, as one line, and its traceback would only hide it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, CollectflowError | ValidationError)


PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


@contextmanager
def _no_prefect_traceback_for_our_errors() -> Iterator[None]:
    """While a command runs, Prefect logs no traceback for an error the command reports."""
    quiet = _OurErrorsUnlogged()
    loggers = [logging.getLogger(name) for name in PREFECT_RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout (dates, decimals as strings)."""
    sys.stdout.write(json.dumps(document, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, date | Decimal):
        return str(value) if isinstance(value, Decimal) else value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def engine_for(settings: Settings) -> Any:
    """An engine on the configured database, its schema created or migrated first."""
    from collectflow.models import init_db, make_engine

    engine = make_engine(settings.database_url)
    init_db(engine)
    return engine
