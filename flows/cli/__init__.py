"""The `collectflow` command line: one Typer app, one module per command group."""

from collectflow.flows.cli.app import app, main

__all__ = ["app", "main"]
