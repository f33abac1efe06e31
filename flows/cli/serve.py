"""`collectflow serve`: the customer page, where answer links in messages lead."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from collectflow.flows.cli.options import engine_for, err, handles_errors
from collectflow.flows.config import get_settings
from collectflow.flows.errors import ConfigError

commands = typer.Typer()

KEEP_ALIVE_SECONDS = 75
"""How long an idle connection stays open: longer than the 60 s a reverse proxy (nginx, a
cloud load balancer) keeps its own, so the proxy closes first. Uvicorn's default of 5 s races
with the proxy reusing the connection, and the customer gets a 502."""


@commands.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Serve the customer page (the answer links in messages) until stopped.

    Needs COLLECTFLOW_LINK_SECRET (the keys that signed the links) and, for the links in
    messages to reach it, COLLECTFLOW_PUBLIC_URL: put it behind a TLS-terminating proxy.
    """
    import uvicorn

    from collectflow.flows.feedback.page import RedactTokens, create_app
    from collectflow.flows.ledger.demo import DEMO_SECRET_FILE

    settings = get_settings()
    demo_key = settings.outbox.resolve().parent / DEMO_SECRET_FILE
    if settings.link_secret is None and demo_key.exists():
        raise ConfigError(
            "COLLECTFLOW_LINK_SECRET is not set; to serve the demo's links, use the demo's key:"
            f" COLLECTFLOW_LINK_SECRET=$(cat {demo_key}) collectflow serve"
        )
    app = create_app(settings)  # no link key: ConfigError, exit 2, before anything listens
    engine_for(settings).dispose()  # creates or migrates the schema first
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    if not settings.public_url:
        err.print(
            "[yellow]COLLECTFLOW_PUBLIC_URL is not set:[/] messages carry no link to this page"
        )
    err.print(f"customer page on http://{host}:{port}/r/… (links under {settings.public_url})")
    uvicorn.run(
        app,
        host=host,
        port=port,
        server_header=False,
        proxy_headers=True,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
