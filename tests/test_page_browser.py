"""The customer page in a real browser: from the link in a real email to each answer's effect.

The daily run reminds three customers and writes their emails to the Maildir, with the answer
links under the address `collectflow serve` listens on (a real process on 127.0.0.1). Debian's
chromium, driven by Selenium through Debian's chromedriver (headless, no JavaScript of ours on
the page), opens the bare URL from each email's text part and answers through the forms:

- EMMA (English, desktop) has already paid one invoice, then says her card payment failed;
- ANNA (French, on a phone) types an amount the form refuses, then asks for more time;
- DIETER (German, desktop) reports a damaged delivery, then asks for no more emails.

Each answer is checked in the database. Screenshots of the three pages are taken on the way;
with COLLECTFLOW_SCREENSHOTS=docs/feedback they go where docs/feedback.md shows them.
"""

from __future__ import annotations

import email
import mailbox
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from email import policy as email_policy
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from collectflow.flows.config import PROJECT_ROOT, Settings, get_settings
from collectflow.flows.pipeline import business_today, open_run, run_day
from collectflow.models import CaseEvent, ClaimedPayment, ContactBlock, Dispute, Message, Promise
from tests.ledger import Ledger

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MISSING = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"no browser for the page's tests: {', '.join(MISSING)} missing"
    ),
]
EVENTS, MESSAGES = CaseEvent.__table__, Message.__table__
PHONE = (390, 844)
DESKTOP = (1200, 900)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def base_url(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """The page's address, set as COLLECTFLOW_PUBLIC_URL before any email is written."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("COLLECTFLOW_PUBLIC_URL", url)
    get_settings.cache_clear()
    return url


@pytest.fixture
def mailed(engine: Engine, base_url: str, tmp_path: Path) -> dict[str, str]:
    """Each customer's answer link, read from the text part of the email they received."""
    settings = get_settings()
    today = business_today(settings)
    due = today - timedelta(days=10)
    ledger = Ledger()
    for customer_id, locale, name in (
        ("EMMA", "en", "Emma Clarke Trading"),
        ("ANNA", "fr", "Boulangerie Anna Bertin"),
        ("DIETER", "de", "Dieter Vogel GmbH"),
    ):
        ledger.customer(customer_id, locale=locale, name=name)
        ledger.history(customer_id, due)
        ledger.invoice(
            f"{customer_id}-1", customer_id, due, amount="1234.50", number=f"{customer_id[:2]}-2031"
        )
        ledger.invoice(
            f"{customer_id}-2",
            customer_id,
            due - timedelta(days=4),
            amount="89.90",
            number=f"{customer_id[:2]}-2024",
        )
    ledger.load(engine, tmp_path / "ledger", settings)
    with open_run(settings) as ctx:
        run_day(ctx, today)
    ledger.payment("PAY-E2", "EMMA-2", today, amount="89.90")  # EMMA paid one since
    ledger.load(engine, tmp_path / "ledger", settings)
    links = {}
    for message in mailbox.Maildir(settings.outbox, create=False):
        parsed = email.message_from_bytes(message.as_bytes(), policy=email_policy.default)
        text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        found = re.findall(rf"^{re.escape(base_url)}/r/\S+$", text, re.M)
        assert len(found) == 1, text
        links[parsed["To"].addresses[0].username.upper()] = found[0]
    assert links.keys() == {"EMMA", "ANNA", "DIETER"}
    return links


@pytest.fixture
def server(mailed: dict[str, str], base_url: str, tmp_path: Path) -> Iterator[str]:
    """`collectflow serve` on the free port, as an operator starts it; stopped afterwards."""
    port = base_url.rsplit(":", 1)[1]
    command = [str(Path(sys.executable).parent / "collectflow"), "serve", "--port", port]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(base_url, process, tmp_path / "serve.log")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
    served = (tmp_path / "serve.log").read_text()
    assert "GET /r/…" in served  # the access log names no token
    assert not any(link.split("/r/")[1] in served for link in mailed.values())


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"collectflow serve exited {process.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/robots.txt", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"collectflow serve did not answer within 60 s:\n{log.read_text()}")


def browser(language: str, size: tuple[int, int]) -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--lang={language}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*size)
    return driver


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = os.environ.get("COLLECTFLOW_SCREENSHOTS")
    target = PROJECT_ROOT / folder if folder else tmp_path / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target


def screenshot(driver, path: Path, width: int) -> None:  # type: ignore[no-untyped-def]
    """The whole page, as tall as it is."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height + 100)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def open_answer(driver, intent: str):  # type: ignore[no-untyped-def]
    """Unfold one answer (a <details>, no script needed) and return its form."""
    from selenium.webdriver.common.by import By

    details = driver.find_element(By.ID, intent)
    if details.get_attribute("open") is None:
        details.find_element(By.TAG_NAME, "summary").click()
    return details.find_element(By.TAG_NAME, "form")


def navigate(driver, element) -> None:  # type: ignore[no-untyped-def]
    """Click a link or a submit button and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(page))


def set_date(driver, field, day: date) -> None:  # type: ignore[no-untyped-def]
    """A date input's value, whatever the browser's display format (the test's own script)."""
    driver.execute_script("arguments[0].value = arguments[1]", field, day.isoformat())


def intents(engine: Engine, customer_id: str) -> list[str]:
    with engine.connect() as conn:
        case_ids = select(MESSAGES.c.case_id).where(MESSAGES.c.customer_id == customer_id)
        details = conn.execute(
            select(EVENTS.c.detail)
            .where(EVENTS.c.case_id.in_(case_ids), EVENTS.c.kind == "customer_response")
            .order_by(EVENTS.c.id)
        ).scalars()
        return [re.search(r'"intent": "(\w+)"', detail).group(1) for detail in details]  # type: ignore[union-attr]


def test_customers_answer_from_the_link_in_their_email(
    engine: Engine, server: str, mailed: dict[str, str], shots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    today = business_today(get_settings())

    driver = browser("en-GB", DESKTOP)
    try:
        driver.get(mailed["EMMA"])
        assert driver.find_element(By.TAG_NAME, "h1").text == "Your invoices"
        paid_row = driver.find_element(By.XPATH, "//tr[th[text()='EM-2024']]")
        assert "Paid" in paid_row.text and not paid_row.find_elements(By.TAG_NAME, "a")
        pay = driver.find_element(By.XPATH, "//tr[th[text()='EM-2031']]//a")
        assert pay.get_attribute("href").startswith("https://")
        form = open_answer(driver, "already_paid")
        screenshot(driver, shots / "page-en.png", DESKTOP[0])
        set_date(driver, form.find_element(By.NAME, "paid_on"), today - timedelta(days=1))
        form.find_element(By.NAME, "amount").send_keys("1,234.50")
        form.find_element(By.NAME, "reference").send_keys("BACS 77-1203")
        navigate(driver, form.find_element(By.TAG_NAME, "button"))
        assert "Thank you, we have your answer" in driver.find_element(By.TAG_NAME, "h1").text
        assert "5 business days" in driver.page_source
        navigate(driver, driver.find_element(By.CLASS_NAME, "back"))
        navigate(driver, open_answer(driver, "payment_failed").find_element(By.TAG_NAME, "button"))
        assert driver.find_elements(By.CSS_SELECTOR, ".pay-list a.button")  # the pay links
    finally:
        driver.quit()
    with engine.connect() as conn:
        claim = conn.execute(select(ClaimedPayment.__table__)).mappings().one()
    assert (claim["invoice_id"], claim["reference"]) == ("EMMA-1", "BACS 77-1203")
    assert intents(engine, "EMMA") == ["already_paid", "payment_failed"]

    driver = browser("fr-FR", PHONE)
    try:
        driver.get(mailed["ANNA"])
        form = open_answer(driver, "need_time")
        set_date(driver, form.find_element(By.NAME, "promise_date"), today + timedelta(days=14))
        form.find_element(By.NAME, "amount").send_keys("mille euros")
        navigate(driver, form.find_element(By.TAG_NAME, "button"))
        error = driver.find_element(By.ID, "need_time-amount-error")
        assert error.text.startswith("Saisissez un montant, par exemple")
        kept = driver.find_element(By.ID, "need_time-amount")
        assert kept.get_attribute("value") == "mille euros"
        screenshot(driver, shots / "page-fr-phone.png", PHONE[0])
        kept.clear()
        kept.send_keys("600,00")
        navigate(driver, driver.find_element(By.CSS_SELECTOR, "#need_time button"))
        assert "d'ici le" in driver.find_element(By.CSS_SELECTOR, ".notice-done").text
    finally:
        driver.quit()
    with engine.connect() as conn:
        promise = conn.execute(select(Promise.__table__)).mappings().one()
    assert (promise["amount"], promise["promised_on"]) == (Decimal("600"), today + timedelta(14))
    assert intents(engine, "ANNA") == ["need_time"]

    driver = browser("de-DE", DESKTOP)
    try:
        driver.get(mailed["DIETER"])
        form = open_answer(driver, "order_problem")
        Select(form.find_element(By.NAME, "reason")).select_by_value("damaged")
        form.find_element(By.NAME, "text").send_keys(
            "Karton beschädigt, <b>2 Gläser</b> zerbrochen."
        )
        form.find_element(By.XPATH, ".//input[@value='DIETER-2']").click()  # only the first
        screenshot(driver, shots / "page-de.png", DESKTOP[0])
        navigate(driver, form.find_element(By.TAG_NAME, "button"))
        assert "Vielen Dank" in driver.find_element(By.TAG_NAME, "h1").text
        navigate(driver, driver.find_element(By.CLASS_NAME, "back"))
        navigate(driver, open_answer(driver, "unsubscribe").find_element(By.TAG_NAME, "button"))
        assert "keine E-Mails mehr" in driver.find_element(By.CSS_SELECTOR, ".notice-done").text
    finally:
        driver.quit()
    with engine.connect() as conn:
        dispute = conn.execute(select(Dispute.__table__)).mappings().one()
        block = conn.execute(select(ContactBlock.__table__)).mappings().one()
    assert dispute["invoice_id"] == "DIETER-1"
    assert dispute["reason"] == "customer: damaged — Karton beschädigt, <b>2 Gläser</b> zerbrochen."
    assert (block["scope"], block["value"], block["reason"]) == ("customer", "DIETER", "opted_out")
    assert intents(engine, "DIETER") == ["order_problem", "unsubscribe"]
