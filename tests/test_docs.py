"""The docs describe the code: generated blocks are current, named paths exist.

The generated blocks (cog, functions in tests/docgen.py) are rerun in check mode; README.md
and the docs in docs/ (but the decision record, which tells history) are read for the paths,
`.py` files and relative links they name, and the README's "Layout" for the folders it lists.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cogapp import Cog

from tests.docgen import REGENERATE, ROOT, cog_files

HISTORY = {"docs/decisions.md"}  # records why things changed: may name what is gone
CHECKED = [
    name
    for name in ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]
    if name not in HISTORY
]
GENERATED_IN = {"README.md", "docs/cli.md", "docs/design.md"}
TOP_FOLDERS = "flows|models|tests|bench|docs|templates"
PATH = re.compile(rf"(?<![\w/.-])((?:{TOP_FOLDERS})/[\w./-]*)")
PY_FILE = re.compile(r"(?<![\w/.-])(\w+\.py)(?!\.?\w)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """Overrides the session's Prefect server (conftest.py): these tests run no flow."""
    yield


def test_generated_blocks_are_current() -> None:
    files = cog_files()
    assert {path.relative_to(ROOT).as_posix() for path in files} >= GENERATED_IN
    output = io.StringIO()
    cog = Cog()
    cog.set_output(stdout=output, stderr=output)
    status = cog.main(["cog", "--check", "--diff", "-I", str(ROOT), *map(str, files)])
    assert status == 0, (
        f"generated docs are stale; regenerate them from the project folder with\n\n"
        f"    {REGENERATE}\n\n{output.getvalue()}"
    )


def _words_outside_cog_code(path: Path) -> str:
    """The document without its cog instructions (they name tests/docgen.py, which exists,
    but say nothing to a reader)."""
    return re.sub(r"\[\[\[cog.*?\]\]\]", "", path.read_text(encoding="utf-8"), flags=re.S)


def _project_py_files() -> set[str]:
    folders = [ROOT / folder for folder in TOP_FOLDERS.split("|")]
    return {p.name for folder in folders for p in folder.rglob("*.py")} | {
        p.name for p in ROOT.glob("*.py")
    }


@pytest.mark.parametrize("name", CHECKED)
def test_paths_named_in_the_docs_exist(name: str) -> None:
    doc = ROOT / name
    text = _words_outside_cog_code(doc)
    missing = sorted(
        {m.rstrip(".") for m in PATH.findall(text) if not (ROOT / m.rstrip(".")).exists()}
        | {f for f in PY_FILE.findall(text) if f not in _project_py_files()}
        | {
            link
            for link in LINK.findall(text)
            if "://" not in link and not (doc.parent / link).exists()
        }
    )
    assert not missing, f"{name} names what does not exist: {', '.join(missing)}"


def _readme_layout() -> list[str]:
    """The folders the README's "Layout" lists, one per line of its code block."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line[:1].strip()]


def test_readme_layout_lists_real_folders_and_every_flows_subpackage() -> None:
    listed = _readme_layout()
    assert not [folder for folder in listed if not (ROOT / folder).is_dir()], listed
    subpackages = sorted(
        f"{init.parent.relative_to(ROOT).as_posix()}/"
        for init in (ROOT / "flows").glob("*/__init__.py")
    )
    unlisted = [folder for folder in subpackages if folder not in listed]
    assert not unlisted, f"README.md, Layout: add {', '.join(unlisted)}"
