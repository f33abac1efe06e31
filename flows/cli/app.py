"""The `collectflow` command line: a convenience over the flows and steps.

The app gathers the commands of each command module (one module per command group); the
command modules share their options through `cli.options` and import nothing back from here.
Every command that prints a summary takes `--json` and then prints exactly one JSON document
on stdout (logs go to stderr). Exit codes: 0 done, 1 failed, 2 bad input or usage.
"""

from __future__ import annotations

import typer

from collectflow.flows.cli import cases, delivery, inbox, report, run, segments, serve
from collectflow.flows.cli import risk as risk_commands

# in the order `--help` lists them
COMMAND_MODULES = (run, cases, delivery, inbox, report, segments, risk_commands, serve)

app = typer.Typer(
    name="collectflow",
    help="Collections and follow-up workflow engine: segment, remind, escalate, measure.",
    no_args_is_help=True,
    add_completion=False,
)
for module in COMMAND_MODULES:
    app.registered_commands.extend(module.commands.registered_commands)
    app.registered_groups.extend(module.commands.registered_groups)


def main() -> None:
    """Console-script entry point."""
    app()
