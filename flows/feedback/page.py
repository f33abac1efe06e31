"""The customer page: where a customer answers a message, from the signed link it carries.

One Starlette app (`create_app`), served by `collectflow serve` (uvicorn):

    GET  /r/{token}              the message's invoices as they stand today, their pay links
                                 and the five answers, each a plain form; `?done=INTENT` is
                                 the confirmation after an answer (POST, redirect, GET)
    POST /r/{token}              one answer: 303 to the confirmation, or the form again (422)
                                 with the reason next to each field and the input kept
    POST /r/{token}/unsubscribe  RFC 8058 one-click opt-out: `List-Unsubscribe=One-Click`
    GET  /r/{token}/unsubscribe  a person whose mail client has no one-click: 303 to the
                                 page's "stop emailing me" form (a GET never opts out: link
                                 scanners fetch URLs in mail)

The token (flows/feedback/links.py) is the only credential: a malformed, tampered or unknown
one gets the same 404 page, naming nobody; an expired one a 410 page saying how to reach the
sender. Every form carries a CSRF token, an HMAC of the link token with the link keys
(itsdangerous, salt of its own), so no session is kept and a form forged elsewhere is refused
(403). Answers count against `policy.feedback.answers_per_link_per_hour`, counted in the
database (customer_response events of the message), so every worker sees the same count (429
past it). Responses carry a strict CSP (no script at all; the one inline stylesheet allowed by
its hash), no-referrer (the token is in the URL), no-store, nosniff and no framing; request
bodies are capped. Pages speak the customer's language (en, fr, de) with the emails' Babel
formatting; the page's markup and stylesheet are `templates/page/`, its words
`page_text.py`, its forms' reading `page_forms.py`, its data `statement.py`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import parseaddr
from typing import Any

import jinja2
from babel import Locale
from itsdangerous import Signer
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collectflow.flows.config import PROJECT_ROOT, Settings
from collectflow.flows.feedback.answers import (
    INTENTS,
    MAX_REFERENCE,
    MAX_TEXT,
    ORDER_REASONS,
    Answer,
    AnswerRefused,
    apply_answer,
    recent_answers,
)
from collectflow.flows.feedback.links import (
    BadLink,
    ExpiredLink,
    LinkClaims,
    LinkSigner,
    link_secrets,
)
from collectflow.flows.feedback.page_forms import (
    FIELDS_OF,
    FormRefused,
    Posted,
    Problem,
    latest_promise,
    posted,
    read_answer,
)
from collectflow.flows.feedback.page_text import (
    Translator,
    language_from_header,
    language_of,
)
from collectflow.flows.feedback.statement import (
    Line,
    Statement,
    load_statement,
    open_promise_date,
    pay_links,
)
from collectflow.flows.ledger.paylinks import PayLink, PayOffer, pay_offer
from collectflow.flows.pipeline import business_today
from collectflow.flows.policy import Policy, load_policy
from collectflow.flows.steps.render.context import (
    babel_locale_for,
    formatting_locale,
    long_date,
    money,
)
from collectflow.models import make_engine

FORM_SALT = "collectflow.page-form.v1"
MAX_BODY = 64 * 1024  # a full form is under 25 KB: 2,000 characters percent-encoded, invoices
MAX_TOKEN = 512
ONE_CLICK = {"List-Unsubscribe": ["One-Click"]}  # RFC 8058's body, all of it
PAGE_TEMPLATES = PROJECT_ROOT / "templates" / "page"
RATE_WINDOW = timedelta(hours=1)
TOKEN_IN_PATH = re.compile(r"/r/[^/?\s]+")


@dataclass(frozen=True)
class Links:
    """Today's pay links of a statement's owed invoices, and the gateway offer they follow."""

    by_invoice: dict[str, PayLink]
    offer: PayOffer

    def stand_in(self) -> str:
        """The backup gateway's name when it stands in for the preferred one (down today)
        on at least one link, as the emails say it; else empty."""
        used = any(link.gateway == self.offer.gateway.name for link in self.by_invoice.values())
        return self.offer.gateway.shown_as if self.offer.fallback and used else ""


@dataclass(frozen=True)
class PageSettings:
    """What the app needs, fixed at startup."""

    policy: Policy
    engine: Engine
    signer: LinkSigner
    forms: Signer
    env: jinja2.Environment
    csp: str
    css: Markup
    contact: str  # the address customers may write to (Reply-To, else From)
    today: Callable[[], date]


def create_app(
    settings: Settings,
    policy: Policy | None = None,
    today: Callable[[], date] | None = None,
) -> ASGIApp:
    """The customer page's ASGI app on the configured database and link keys.

    Raises ConfigError at once when no link key is configured, so `collectflow serve` fails
    at startup rather than at the first customer. `today` (default: today in the business
    timezone) dates each request; tests pass a fixed day.
    """
    secrets = link_secrets(settings)
    signer = LinkSigner(secrets)  # ConfigError without a key
    env = _environment(settings)
    css = Markup(env.loader.get_source(env, "page.css")[0])  # type: ignore[union-attr]
    engine = make_engine(settings.database_url)
    page = PageSettings(
        policy=policy or load_policy(settings.policy),
        engine=engine,
        signer=signer,
        forms=Signer(list(reversed(secrets)), salt=FORM_SALT),
        env=env,
        csp=_csp(str(css)),
        css=css,
        contact=parseaddr(settings.reply_to or settings.smtp_from)[1],
        today=today or (lambda: business_today(settings)),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        engine.dispose()

    app = Starlette(
        routes=[
            Route("/r/{token}", _page_view, methods=["GET"]),
            Route("/r/{token}", _answer, methods=["POST"], max_body_size=MAX_BODY),
            Route("/r/{token}/unsubscribe", _to_stop_form, methods=["GET"]),
            Route("/r/{token}/unsubscribe", _one_click, methods=["POST"], max_body_size=MAX_BODY),
            Route("/robots.txt", _robots, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.page = page
    strict_transport = (settings.public_url or "").startswith("https://")
    return SecurityHeaders(app, page.csp, strict_transport)


def _environment(settings: Settings) -> jinja2.Environment:
    """Jinja2 for the page: the operator's `templates/page/` first, then the shipped one;
    autoescaped, undefined names an error, sandboxed like the emails' templates."""
    folders = [settings.templates / "page", PAGE_TEMPLATES]
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(folder) for folder in dict.fromkeys(folders)]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals["mailto"] = mailto
    return env


def mailto(address: str) -> Markup:
    """A link to write to `address`, for the page's sentences that name it."""
    return Markup('<a href="mailto:{0}">{0}</a>').format(address)


def _csp(css: str) -> str:
    """No script, no plugin, no frame, nothing fetched: only the page's own inline
    stylesheet (allowed by its hash, so no nonce and no 'unsafe-inline') and forms posting
    to this site."""
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


class SecurityHeaders:
    """Adds the page's security headers to every response, errors included (it wraps the
    whole app, outside Starlette's own error handling)."""

    def __init__(self, app: Starlette, csp: str, strict_transport: bool) -> None:
        self.app = app
        headers = [
            (b"content-security-policy", csp.encode("ascii")),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"x-robots-tag", b"noindex, nofollow"),
        ]
        if strict_transport:
            headers.append((b"strict-transport-security", b"max-age=31536000"))
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RedactTokens(logging.Filter):
    """Keeps answer-link tokens out of the access log: a token is a customer's key to their
    page, and logs are read by more people than the page is meant for."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_PATH.sub("/r/…", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


# --- the routes -------------------------------------------------------------------------


async def _page_view(request: Request) -> Response:
    page: PageSettings = request.app.state.page
    claims = _claims(request, page)
    statement, links = await run_in_threadpool(_statement_and_links, page, claims)
    done = request.query_params.get("done")
    if done in INTENTS:
        return await run_in_threadpool(_confirmation, request, page, statement, links, done)
    opened = request.query_params.get("answer")
    return _statement_page(request, page, statement, links, opened=opened)


async def _answer(request: Request) -> Response:
    page: PageSettings = request.app.state.page
    claims = _claims(request, page)
    form = _fields(await request.form(max_files=0, max_fields=500))
    if not _form_token_valid(page, request.path_params["token"], form):
        language = await run_in_threadpool(_language, page, claims)
        return _notice(page, 403, "forbidden", language)
    answer_form = posted(form)
    statement, links = await run_in_threadpool(_statement_and_links, page, claims)
    if answer_form.intent not in INTENTS:
        return _notice(page, 400, "bad_request", language_of(statement.locale))
    if await run_in_threadpool(_over_limit, page, statement):
        return _notice(page, 429, "too_many", language_of(statement.locale))
    locale = _formatting(statement)
    try:
        answer = read_answer(answer_form, statement, page.policy, page.today(), locale)
        await run_in_threadpool(_apply, page, answer)
    except FormRefused as refused:
        return _statement_page(request, page, statement, links, answer_form, refused.problems)
    except AnswerRefused as refused:
        field = refused.field if refused.field in FIELDS_OF[answer_form.intent] else "form"
        problems = {field: Problem("error_refused", {"reason": refused.reason})}
        return _statement_page(request, page, statement, links, answer_form, problems)
    token = request.path_params["token"]
    return RedirectResponse(f"{token}?done={answer_form.intent}", status_code=303)


async def _one_click(request: Request) -> Response:
    """RFC 8058: the mailbox provider POSTs `List-Unsubscribe=One-Click`, nothing else, with
    no page and no CSRF token (it has neither). An expired link still opts out: the
    signature proves the message is ours, and an opt-out must keep working."""
    page: PageSettings = request.app.state.page
    claims = _claims(request, page, expired_ok=True)
    form = _fields(await request.form(max_files=0, max_fields=10))
    if form != ONE_CLICK:
        return PlainTextResponse("expected List-Unsubscribe=One-Click", status_code=400)
    statement = await run_in_threadpool(_statement, page, claims)
    if await run_in_threadpool(_over_limit, page, statement):
        return PlainTextResponse("too many requests", status_code=429)
    answer = Answer(
        customer_id=statement.customer_id,
        intent="unsubscribe",
        source="one_click",
        message_id=statement.message_id,
    )
    await run_in_threadpool(_apply, page, answer)
    return PlainTextResponse("unsubscribed")


async def _to_stop_form(request: Request) -> Response:
    """A person opening the one-click URL in a browser lands on the page's stop form."""
    _claims(request, request.app.state.page, expired_ok=True)
    token = request.path_params["token"]
    return RedirectResponse(f"../{token}?answer=unsubscribe#unsubscribe", status_code=303)


async def _robots(request: Request) -> Response:
    return PlainTextResponse("User-agent: *\nDisallow: /\n")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths, bad links, wrong methods, bodies too large: one plain page each, in the
    browser's language, naming no customer."""
    assert isinstance(exc, HTTPException)
    page: PageSettings = request.app.state.page
    language = language_from_header(request.headers.get("accept-language"))
    if isinstance(exc, _Expired):
        return await run_in_threadpool(_expired_page, request, page, exc.claims)
    kind = {403: "forbidden", 413: "too_large", 404: "bad_link"}.get(exc.status_code)
    response = _notice(page, exc.status_code, kind or "bad_request", language)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("Internal Server Error", status_code=500)


# --- reading the link -------------------------------------------------------------------


class _Expired(HTTPException):
    def __init__(self, claims: LinkClaims) -> None:
        super().__init__(status_code=410)
        self.claims = claims


def _claims(request: Request, page: PageSettings, expired_ok: bool = False) -> LinkClaims:
    """The link's claims; 404 for any token we did not sign, 410 past its expiry."""
    token = request.path_params["token"]
    if len(token) > MAX_TOKEN:
        raise HTTPException(status_code=404)
    try:
        return page.signer.verify(token, page.today())
    except BadLink:
        raise HTTPException(status_code=404) from None
    except ExpiredLink as expired:
        if expired_ok:
            return expired.claims
        raise _Expired(expired.claims) from None


def _form_token(page: PageSettings, token: str) -> str:
    return page.forms.get_signature(token).decode("ascii")


def _form_token_valid(page: PageSettings, token: str, form: Mapping[str, list[str]]) -> bool:
    sent = form.get("csrf") or [""]
    return len(sent) == 1 and page.forms.verify_signature(token, sent[0])


def _fields(form: FormData) -> dict[str, list[str]]:
    """The posted fields as text; a file where a form has none is a bad request."""
    fields: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str):
            raise HTTPException(status_code=400)
        fields.setdefault(name, []).append(value)
    return fields


# --- the database (each call one short transaction, in a worker thread) ----------------


def _statement(page: PageSettings, claims: LinkClaims) -> Statement:
    with page.engine.connect() as conn:
        statement = load_statement(conn, claims, page.today())
    if statement is None:
        raise HTTPException(status_code=404)
    return statement


def _statement_and_links(page: PageSettings, claims: LinkClaims) -> tuple[Statement, Links]:
    today = page.today()
    with page.engine.connect() as conn:
        statement = load_statement(conn, claims, today)
        if statement is None:
            raise HTTPException(status_code=404)
        offer = pay_offer(conn, page.policy, today)
    return statement, Links(pay_links(statement, offer), offer)


def _over_limit(page: PageSettings, statement: Statement) -> bool:
    since = datetime.now(UTC) - RATE_WINDOW
    with page.engine.connect() as conn:
        count = recent_answers(conn, statement.message_id, since)
    return count >= page.policy.feedback.answers_per_link_per_hour


def _apply(page: PageSettings, answer: Answer) -> None:
    with page.engine.begin() as conn:
        apply_answer(conn, page.policy, answer, page.today())


# --- the pages --------------------------------------------------------------------------


def _formatting(statement: Statement) -> Locale:
    """The Babel locale of the customer's money and dates: theirs when the page speaks their
    language (fr_CA figures on the French page), else the page's language's (as the emails)."""
    return babel_locale_for(formatting_locale(statement.locale, language_of(statement.locale)))


def _language(page: PageSettings, claims: LinkClaims) -> str:
    statement = _statement(page, claims)
    return language_of(statement.locale)


def _render(page: PageSettings, template: str, status: int, **context: Any) -> HTMLResponse:
    html = page.env.get_template(template).render(css=page.css, **context)
    return HTMLResponse(html, status_code=status)


def _common(page: PageSettings, language: str, locale: Locale) -> dict[str, Any]:
    """What every page shows: its language, words, and who the sender is."""
    sender = page.policy.sender
    return {
        "lang": language,
        "t": Translator(language),
        "company": sender.company,
        "sender_name": sender.name_in(language),
        "contact": page.contact,
        "today": long_date(page.today(), locale),
    }


def _statement_page(
    request: Request,
    page: PageSettings,
    statement: Statement,
    links: Links,
    form: Posted | None = None,
    problems: Mapping[str, Problem] | None = None,
    opened: str | None = None,
) -> HTMLResponse:
    language = language_of(statement.locale)
    locale = _formatting(statement)
    t = Translator(language)
    today = page.today()
    feedback = page.policy.feedback
    return _render(
        page,
        "statement.html",
        422 if problems else 200,
        **_common(page, language, locale),
        token=request.path_params["token"],
        csrf=_form_token(page, request.path_params["token"]),
        customer_name=statement.customer_name,
        lines=[_line(line, links, locale) for line in statement.lines],
        owing_lines=[_line(line, links, locale) for line in statement.owing],
        reasons=ORDER_REASONS,
        totals=[money(owed, code, locale) for code, owed in sorted(statement.totals().items())],
        currencies=sorted(statement.totals()),
        intents=INTENTS if statement.owing else ("unsubscribe",),
        stand_in=links.stand_in(),
        opened=form.intent if form else opened,
        form=form,
        problems={
            name: _problem_text(t, problem, locale) for name, problem in (problems or {}).items()
        },
        hold_days=feedback.claimed_paid_hold_days,
        promise_days=feedback.max_promise_days,
        today_iso=today.isoformat(),
        latest_iso=latest_promise(page.policy, today).isoformat(),
        latest=long_date(latest_promise(page.policy, today), locale),
        max_text=MAX_TEXT,
        max_reference=MAX_REFERENCE,
    )


def _confirmation(
    request: Request,
    page: PageSettings,
    statement: Statement,
    links: Links,
    intent: str,
) -> HTMLResponse:
    language = language_of(statement.locale)
    locale = _formatting(statement)
    promised = None
    if intent == "need_time":
        with page.engine.connect() as conn:
            promised = open_promise_date(conn, statement.case_id)
    return _render(
        page,
        "done.html",
        200,
        **_common(page, language, locale),
        token=request.path_params["token"],
        intent=intent,
        stand_in=links.stand_in(),
        hold_days=page.policy.feedback.claimed_paid_hold_days,
        promised=long_date(promised, locale) if promised else None,
        lines=[_line(line, links, locale) for line in statement.owing],
    )


def _notice(page: PageSettings, status: int, kind: str, language: str) -> HTMLResponse:
    locale = babel_locale_for(language)
    return _render(
        page,
        "notice.html",
        status,
        **_common(page, language, locale),
        title=f"{kind}_title",
        body=kind,
        values={},
    )


def _expired_page(request: Request, page: PageSettings, claims: LinkClaims) -> HTMLResponse:
    """410 with how to reach the sender, in the customer's language when the (genuine, but
    old) link's customer is still known."""
    language = language_from_header(request.headers.get("accept-language"))
    with suppress(HTTPException):  # the customer is gone: the browser's language
        language = _language(page, claims)
    locale = babel_locale_for(language)
    common = _common(page, language, locale)
    values = {
        "date": long_date(claims.expires_on, locale),
        "name": common["sender_name"],
        "company": common["company"],
        "email": mailto(page.contact),
    }
    return _render(
        page,
        "notice.html",
        410,
        **common,
        title="expired_title",
        body="expired" if page.contact else "expired_no_email",
        values=values,
    )


def _line(line: Line, links: Links, locale: Locale) -> dict[str, Any]:
    link = links.by_invoice.get(line.invoice_id)
    return {
        "invoice_id": line.invoice_id,
        "number": line.number,
        "due_on": long_date(line.due_on, locale),
        "amount": money(line.amount, line.currency, locale),
        "owed": money(line.owed, line.currency, locale),
        "state": line.state,
        "owing": line.owing,
        "pay_url": link.url if link else None,
    }


def _problem_text(t: Translator, problem: Problem, locale: Locale) -> str:
    values = dict(problem.values)
    currency = values.pop("currency", None)
    for name, value in values.items():
        if isinstance(value, Decimal) and currency:
            values[name] = money(value, currency, locale)
        elif isinstance(value, date):
            values[name] = long_date(value, locale)
    return t(problem.key, **values)
