"""The `collectflow` command line: one Typer app, one module per command group.

`app.py` gathers the commands (the console script is `collectflow.flows.cli.app:main`);
`options.py` holds what the command modules share; `run.py` (init, import, run, demo),
`cases.py` (queue, case, operator actions), `delivery.py` (deliver, opt-out, in-doubt),
`report.py` and `segments.py` hold the commands.
"""
