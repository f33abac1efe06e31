"""Step 4, render: planned messages become subject, text and HTML in the customer's language.

`catalog.py` loads, sandboxes and validates the templates (`templates/<locale>/`), `context.py`
builds each message's context with Babel-formatted money and dates, and `batches.py` renders
the planned messages a batch at a time and stores them.
"""

from collectflow.flows.steps.render.batches import render_planned
from collectflow.flows.steps.render.catalog import (
    INTERNAL_TEMPLATES,
    PARTS,
    Rendered,
    TemplateCatalog,
    load_catalog,
)
from collectflow.flows.steps.render.context import (
    CONTEXT_KEYS,
    FALLBACK_LOCALE,
    babel_locale_for,
    build_context,
    sample_contexts,
)

__all__ = [
    "CONTEXT_KEYS",
    "FALLBACK_LOCALE",
    "INTERNAL_TEMPLATES",
    "PARTS",
    "Rendered",
    "TemplateCatalog",
    "babel_locale_for",
    "build_context",
    "load_catalog",
    "render_planned",
    "sample_contexts",
]
