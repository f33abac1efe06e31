"""The template catalog: every template of every locale, loaded, sandboxed and validated.

Templates live in `templates/<locale>/<template>.{subject,txt,html}.j2`; the HTML parts extend
the shared `templates/_layout.html.j2`, and files starting with `_` are partials (macros,
layout), never templates. A locale falls back from the most specific folder to the least, then
to `en` (`fr_CA` -> `fr` -> `en`), so `en` must hold every template. Internal messages
(`kind = 'internal'`, e.g. `escalation`) always render in `en`.

Templates are operator-edited, so they render in a Jinja2 sandbox (immutable: a template cannot
change its context) with `StrictUndefined`, and HTML parts are autoescaped. `validate()` renders
every template in every locale at startup, so a misspelled variable stops the run before any
message is rendered rather than halfway through it. Subjects are collapsed to one line, so a
name holding CR/LF cannot inject mail headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from collectflow.flows.errors import TemplateError
from collectflow.flows.policy.document import Policy
from collectflow.flows.steps.render.context import (
    CONTEXT_KEYS,
    FALLBACK_LOCALE,
    locale_chain,
    sample_contexts,
)

INTERNAL_TEMPLATES = frozenset({"escalation"})
PARTS = ("subject", "txt", "html")


@dataclass(frozen=True)
class Rendered:
    """One message, ready to send."""

    subject: str
    text: str
    html: str


class TemplateCatalog:
    """Loads templates/ once, resolves locale fallback (fr_CA -> fr -> en), renders in a jinja2
    SandboxedEnvironment with StrictUndefined and autoescape for .html templates."""

    def __init__(self, directory: Path, templates: AbstractSet[str]):
        directory = Path(directory)
        if not directory.is_dir():
            raise TemplateError(f"{directory}: template directory not found")
        self.directory = directory
        self.templates = frozenset(templates)
        self._folders = {
            path.name.lower(): path.name
            for path in sorted(directory.iterdir())
            if path.is_dir() and not path.name.startswith(("_", "."))
        }
        self._files = {path.relative_to(directory).as_posix() for path in directory.glob("*/*.j2")}
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(directory),
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: name is not None and name.endswith(".html.j2"),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )

    def validate(self) -> None:
        """Check every template in every locale now, so a broken one stops the run at startup.

        Raises TemplateError if a template has no `en` version, a locale folder has only some
        of a template's parts, a file uses a variable the context does not have, or a part
        fails to render with sample contexts (naming template, locale, part and variable).
        """
        for template in sorted(self.templates):
            if not self._has(FALLBACK_LOCALE, template):
                raise TemplateError(
                    f"{self.directory / FALLBACK_LOCALE}: template {template!r} is missing "
                    f"(en is the fallback for every locale and needs "
                    f"{', '.join(self._filename(template, part) for part in PARTS)})"
                )
        self._check_variables()
        for folder in self._folders.values():
            for template in sorted(self.templates):
                self._check_parts_complete(folder, template)
                if self._has(folder, template):
                    for context in sample_contexts(folder):
                        self._render_in(folder, template, context)

    def locale_for(self, locale: str, template: str | None = None) -> str:
        """The folder whose templates `locale` uses (for `template`, if given): the most
        specific folder that exists, else `en`."""
        for candidate in locale_chain(locale):
            folder = self._folders.get(candidate.lower())
            if folder and (template is None or self._has(folder, template)):
                return folder
        return FALLBACK_LOCALE

    def render(self, template: str, locale: str, context: Mapping[str, Any]) -> Rendered:
        """Render the three parts of `template` in the folder `locale` falls back to."""
        return self._render_in(self.locale_for(locale, template), template, context)

    def _render_in(self, folder: str, template: str, context: Mapping[str, Any]) -> Rendered:
        subject, text, html = (self._render_part(folder, template, part, context) for part in PARTS)
        return Rendered(
            subject=" ".join(subject.split()), text=text.strip() + "\n", html=html.strip() + "\n"
        )

    def _render_part(
        self, folder: str, template: str, part: str, context: Mapping[str, Any]
    ) -> str:
        name = self._name(folder, template, part)
        try:
            return self._env.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {template!r}, locale {folder!r}, part {part}: "
                f"{self.directory / exc.name} not found"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"template {template!r}, locale {folder!r}, part {part} "
                f"({_where(exc, self.directory, name)}): {exc.message}"
            ) from exc
        except Exception as exc:  # operator-written code can fail any way, e.g. `owed + 1`
            raise TemplateError(
                f"template {template!r}, locale {folder!r}, part {part} "
                f"({_where(exc, self.directory, name)}): {type(exc).__name__}: {exc}"
            ) from exc

    def _check_variables(self) -> None:
        """Name any variable outside the context contract, even in branches samples miss."""
        allowed = CONTEXT_KEYS | set(self._env.globals)
        for path in sorted(self.directory.rglob("*.j2")):
            name = path.relative_to(self.directory).as_posix()
            try:
                parsed = self._env.parse(path.read_text(encoding="utf-8"), name, str(path))
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{_label(name)} ({path}:{exc.lineno}): {exc.message}") from exc
            unknown = meta.find_undeclared_variables(parsed) - allowed
            if unknown:
                raise TemplateError(
                    f"{_label(name)} ({path}): unknown variable {', '.join(sorted(unknown))} "
                    f"(the context has: {', '.join(sorted(CONTEXT_KEYS))})"
                )

    def _check_parts_complete(self, folder: str, template: str) -> None:
        present = [part for part in PARTS if self._name(folder, template, part) in self._files]
        if present and len(present) < len(PARTS):
            missing = [self._filename(template, part) for part in PARTS if part not in present]
            raise TemplateError(
                f"{self.directory / folder}: template {template!r} is incomplete, missing "
                f"{', '.join(missing)} (add them, or remove the others to fall back to en)"
            )

    def _has(self, folder: str, template: str) -> bool:
        return all(self._name(folder, template, part) in self._files for part in PARTS)

    def _name(self, folder: str, template: str, part: str) -> str:
        return f"{folder}/{self._filename(template, part)}"

    @staticmethod
    def _filename(template: str, part: str) -> str:
        return f"{template}.{part}.j2"


def load_catalog(directory: Path, policy: Policy) -> TemplateCatalog:
    """The catalog for `policy`'s templates plus the internal ones, validated."""
    catalog = TemplateCatalog(directory, policy.templates() | INTERNAL_TEMPLATES)
    catalog.validate()
    return catalog


def _label(name: str) -> str:
    """`fr/gentle.txt.j2` -> "template 'gentle', locale 'fr', part txt"; shared files by name."""
    folder, _, filename = name.rpartition("/")
    template, _, part = filename.removesuffix(".j2").rpartition(".")
    if folder and part in PARTS and not filename.startswith("_"):
        return f"template {template!r}, locale {folder!r}, part {part}"
    return f"shared file {name}"


def _where(exc: Exception, directory: Path, name: str) -> str:
    """`file:line` of the template frame that failed, for an error a person can fix."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno:
        return f"{directory / (exc.name or name)}:{exc.lineno}"
    frame: TracebackType | None = exc.__traceback__
    where = str(directory / name)
    while frame is not None:
        filename = frame.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"{filename}:{frame.tb_lineno}"
        frame = frame.tb_next
    return where
