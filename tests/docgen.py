"""The generated parts of README.md and docs/, written by cog from the code itself.

Each function returns one block of Markdown; the cog blocks in the docs call them, and
tests/test_docs.py fails when a block no longer matches what its function returns now.
Regenerate every block, from the project folder, with the command in `REGENERATE`.

Output is the same on every machine: paths relative to the project, sorted where the code
gives no order, and the CLI's help rendered at a fixed width without colour.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "cog -r -I . README.md docs/*.md"
HELP_WIDTH = 100


def cog_files(root: Path = ROOT) -> list[Path]:
    """README.md and every doc in docs/ that holds a cog block."""
    candidates = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [path for path in candidates if "[[[cog" in path.read_text(encoding="utf-8")]


# The command line ------------------------------------------------------------------------


def commands() -> list[tuple[str, ...]]:
    """Every command path of the `collectflow` app, groups before their sub-commands, in the
    order `--help` lists them."""
    from typer.main import get_command

    from collectflow.flows.cli.app import app

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        yield path
        if hasattr(command, "list_commands"):  # a group (Typer may vendor Click: duck-typed)
            context = command.context_class(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                if sub is not None and not sub.hidden:
                    yield from walk(sub, (*path, name))

    return list(walk(get_command(app), ()))


def command_of(path: tuple[str, ...]) -> Any:
    """The Click command object of a command path."""
    from typer.main import get_command

    from collectflow.flows.cli.app import app

    command = get_command(app)
    for name in path:
        command = command.get_command(command.context_class(command), name)
        assert command is not None, f"no command {' '.join(path)}"
    return command


@contextmanager
def plain_terminal() -> Iterator[dict[str, str | None]]:
    """Typer's Rich help at HELP_WIDTH columns, no colour, whatever the terminal: Typer reads
    TERMINAL_WIDTH and FORCE_COLOR once at import, so its module settings are set here."""
    from typer import rich_utils

    saved = rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM
    rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM = (
        HELP_WIDTH,
        False,
        None,
    )
    width = str(HELP_WIDTH)
    try:
        yield {"COLUMNS": width, "TERMINAL_WIDTH": width, "NO_COLOR": "1", "FORCE_COLOR": None}
    finally:
        rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM = saved


def help_text(path: tuple[str, ...]) -> str:
    """`collectflow ... --help` as a user sees it, without trailing blanks."""
    from typer.testing import CliRunner

    from collectflow.flows.cli.app import app

    with plain_terminal() as env:
        result = CliRunner().invoke(app, [*path, "--help"], prog_name="collectflow", env=env)
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.output.splitlines()]
    return "\n".join(lines).strip("\n")


def cli_reference() -> str:
    """docs/cli.md: every command's --help, one section each."""
    sections = []
    for path in commands():
        title = " ".join(("collectflow", *path))
        sections.append(f"## `{title}`\n\n```text\n{help_text(path)}\n```\n")
    return "\n".join(sections)


def command_list(link: str = "docs/cli.md") -> str:
    """One line per command with the first paragraph of its help, linked to its reference."""
    lines = []
    for path in commands()[1:]:
        summary = " ".join((command_of(path).help or "").split("\n\n")[0].split())
        anchor = "-".join(("collectflow", *path))
        lines.append(f"- [`collectflow {' '.join(path)}`]({link}#{anchor}): {summary}")
    return "\n".join(lines) + "\n"


# The modules -----------------------------------------------------------------------------


def summary_of(path: Path) -> str:
    """The first sentence of a module's docstring (its first paragraph, joined)."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", paragraph)[0].rstrip(":")
    return sentence.replace("|", "\\|") or "(no docstring)"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("collectflow", *parts))


def module_map(folder: str = "flows", root: Path = ROOT) -> str:
    """docs/design.md: each module of `folder`, grouped by package, with its path and summary."""
    packages: dict[Path, list[Path]] = {}
    for path in sorted((root / folder).rglob("*.py")):
        packages.setdefault(path.parent, []).append(path)
    blocks = []
    for package in sorted(packages, key=lambda p: p.relative_to(root).parts):
        rows = [
            f"| `{module_name(path, root)}` | `{path.relative_to(root).as_posix()}` "
            f"| {summary_of(path)} |"
            for path in packages[package]
        ]
        heading = f"#### `{package.relative_to(root).as_posix()}/`"
        blocks.append(
            "\n".join([heading, "", "| module | file | what it is |", "|---|---|---|", *rows])
        )
    return "\n\n".join(blocks) + "\n"


# The deployments -------------------------------------------------------------------------


def deployment_table(root: Path = ROOT) -> str:
    """docs/design.md: the deployments of prefect.yaml, in the file's order."""
    document = yaml.safe_load((root / "prefect.yaml").read_text(encoding="utf-8"))
    rows = ["| deployment | entrypoint | schedule |", "|---|---|---|"]
    for deployment in document["deployments"]:
        schedules = [
            f"`{s['cron']}` {s['timezone']}" + ("" if s.get("active", True) else " (inactive)")
            for s in deployment.get("schedules", [])
        ]
        tags = "".join(f" ({tag})" for tag in deployment.get("tags", []))
        rows.append(
            f"| `{deployment['name']}`{tags} | `{deployment['entrypoint']}` "
            f"| {', '.join(schedules) or 'manual'} |"
        )
    return "\n".join(rows) + "\n"


# The policy ------------------------------------------------------------------------------


def reply_rules() -> str:
    """docs/policy.md: the shipped rules that read replies, per language, and the automatic
    replies' subjects (flows/policy/replies.py)."""
    from collectflow.flows.policy.replies import DEFAULT_OUT_OF_OFFICE, DEFAULT_RULES

    rows = ["| rule | intent | confidence | phrases, patterns |", "|---|---|---|---|"]
    for language, rules in DEFAULT_RULES.items():
        for index, rule in enumerate(rules):
            said = [f"“{phrase}”" for phrase in rule.phrases]
            said += [f"`{pattern}`".replace("|", "\\|") for pattern in rule.patterns]
            intent = rule.intent + (f" ({rule.reason})" if rule.reason else "")
            rows.append(
                f"| `{language}.{index}` | {intent} | {rule.confidence:g} | {', '.join(said)} |"
            )
    subjects = [
        f"- {language}: " + ", ".join(f"“{subject}”" for subject in found)
        for language, found in DEFAULT_OUT_OF_OFFICE.items()
    ]
    return "\n".join(rows) + "\n\nOut-of-office subjects:\n\n" + "\n".join(subjects) + "\n"


# The policy ----------------------------------------------------------------------------------


def policy_keys(section: str) -> str:
    """docs/policy.md: one policy section's keys, defaults and meanings, from its model."""
    from pydantic import BaseModel

    from collectflow.flows.policy.document import Policy

    model = Policy.model_fields[section].annotation
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, list):
            default = [item.model_dump(mode="json") for item in default]
        shown = "none" if default is None else f"`{_inline(default)}`"
        rows.append(f"| `{name}` | {shown} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def _inline(value: Any) -> str:
    """A default as YAML's flow style writes it, on one line."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    )
