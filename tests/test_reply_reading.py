"""Reading inbound mail, without a database: what a reply says in English, French and German
(and the date it names), what it quoted, which mail is automatic, what each MTA's bounce
reports, and that no bytes at all make the reading fail."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectflow.flows.feedback.autoreplies import AutoReplies
from collectflow.flows.feedback.bounces import bounce_of
from collectflow.flows.feedback.classify import Classifier
from collectflow.flows.feedback.dates import dates_in
from collectflow.flows.feedback.filing import not_applied, said_date
from collectflow.flows.feedback.inbound import parse
from collectflow.flows.feedback.quoting import own_words
from collectflow.flows.feedback.triage import AUTO_REPLY, BOUNCE, REPLY, UNREADABLE, triage
from collectflow.flows.policy import Policy
from collectflow.flows.policy.replies import Replies
from tests.inbound import bounce, reply

TODAY = date(2026, 12, 5)


@pytest.fixture(scope="module")
def classifier(policy: Policy) -> Classifier:
    return Classifier(policy.replies)


@pytest.mark.parametrize(
    ("language", "text", "intent", "written"),
    [
        ("en", "Hello, I already paid this by bank transfer on 3 December.", "already_paid",
         date(2026, 12, 3)),
        ("en", "We have paid the invoice yesterday.", "already_paid", None),
        ("en", "I tried but my card was declined twice.", "payment_failed", None),
        ("en", "We never received the goods, so we will not pay.", "order_problem", None),
        ("en", "Could I have a bit more time? I will pay by 15 December.", "need_time",
         date(2026, 12, 15)),
        ("en", "Please unsubscribe me from these emails.", "unsubscribe", None),
        ("fr", "Bonjour, j'ai déjà payé cette facture le 2 décembre.", "already_paid",
         date(2026, 12, 2)),
        ("fr", "Le paiement a échoué, ma carte a été refusée.", "payment_failed", None),
        ("fr", "Je n'ai jamais reçu la commande.", "order_problem", None),
        ("fr", "Je paierai le 15 décembre, merci de patienter.", "need_time", date(2026, 12, 15)),
        ("fr", "Merci de me désinscrire de vos envois.", "unsubscribe", None),
        ("de", "Ich habe die Rechnung bereits überwiesen.", "already_paid", None),
        ("de", "Die Zahlung ist fehlgeschlagen, die Karte wurde abgelehnt.", "payment_failed",
         None),
        ("de", "Die Ware ist nie angekommen.", "order_problem", None),
        ("de", "Ich werde bis zum 15. Dezember bezahlen.", "need_time", date(2026, 12, 15)),
        ("de", "Bitte keine E-Mails mehr, ich möchte mich abmelden.", "unsubscribe", None),
        ("en", "Thanks for the reminder, have a nice day.", "other", None),
    ],
)  # fmt: skip
def test_a_reply_is_read_in_its_language_with_the_date_it_names(
    classifier: Classifier, language: str, text: str, intent: str, written: date | None
) -> None:
    reading = classifier.read(text, language)

    assert reading.intent == intent, reading
    assert said_date(reading.intent, text, TODAY, classifier.languages) == written
    if intent != "other":
        assert reading.confidence >= 0.8 and reading.rule and reading.rule.startswith(language)


def test_a_reply_in_another_language_than_the_customers_is_read_all_the_same(
    classifier: Classifier,
) -> None:
    assert classifier.read("Je paierai le 15 décembre.", "en").intent == "need_time"
    assert classifier.read("deja paye, merci", "de").intent == "already_paid"  # no accents


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("by 15 December", date(2026, 12, 15)),
        ("le 15 décembre", date(2026, 12, 15)),
        ("bis zum 15. Dezember", date(2026, 12, 15)),
        ("15/12/2026", date(2026, 12, 15)),
        ("2026-12-15", date(2026, 12, 15)),
        ("15.12.2026", date(2026, 12, 15)),
        ("December 15th, 2026", date(2026, 12, 15)),
        ("le 1er janvier", date(2027, 1, 1)),  # no year: the nearest, here the coming one
        ("paid on 3 Dec", date(2026, 12, 3)),  # the nearest, here two days ago
        ("12/15/2026", date(2026, 12, 15)),  # the second number cannot be a month
    ],
)
def test_dates_are_read_in_english_french_and_german_forms(text: str, expected: date) -> None:
    assert dates_in(text, TODAY) == [expected]


def test_amounts_and_impossible_dates_are_not_dates() -> None:
    assert dates_in("I owe 250.00 EUR, ref 31/02/2026, version 1.2.3", TODAY) == []


QUOTED = {
    "en": "On Sat, Dec 5, 2026 at 9:12 AM Accounts Receivable <billing@example.com> wrote:",
    "fr": "Le sam. 5 déc. 2026 à 09:12, Service comptabilité <billing@example.com> a écrit :",
    "de": "Am Sa., 5. Dez. 2026 um 09:12 Uhr schrieb Debitorenbuchhaltung <billing@example.com>:",
}


@pytest.mark.parametrize("language", sorted(QUOTED))
def test_quoted_reminder_and_signature_are_not_read(classifier: Classifier, language: str) -> None:
    body = (
        "Thanks, noted.\n\n-- \nJane Doe\nStop by our shop anytime\n\n"
        f"{QUOTED[language]}\n> If you have already paid, please disregard this message.\n"
        "> To stop these emails, unsubscribe here.\n"
    )

    words = own_words(body)

    assert words == "Thanks, noted."
    assert classifier.read(words, language).intent == "other"


def test_an_attribution_wrapped_over_two_lines_and_an_outlook_header_block_end_the_text() -> None:
    wrapped = (
        "Will pay Friday.\n\nOn Sat, Dec 5, 2026 at 9:12 AM Accounts Receivable\n"
        "<billing@example.com> wrote:\n> Pay now\n"
    )
    outlook = (
        "Bereits bezahlt.\n\n________________________________\n"
        "Von: Buchhaltung <billing@example.com>\nGesendet: Samstag, 5. Dezember 2026 09:12\n"
        "An: Carl\nBetreff: Erinnerung\n\nBitte zahlen Sie."
    )

    assert own_words(wrapped) == "Will pay Friday."
    assert own_words(outlook) == "Bereits bezahlt."


def test_a_reply_saying_two_things_goes_to_a_person(classifier: Classifier) -> None:
    reading = classifier.read("I already paid, and please stop emailing me.", "en")

    assert reading.confidence < classifier.threshold
    assert set(reading.also) | {reading.intent} == {"already_paid", "unsubscribe"}
    assert not_applied(reading, None, classifier.threshold, None)


def test_the_threshold_and_the_rules_come_from_the_policy() -> None:
    replies = Replies.model_validate(
        {
            "apply_threshold": 0.95,
            "rules": {"en": [{"intent": "unsubscribe", "confidence": 0.9, "phrases": ["go away"]}]},
        }
    )
    classifier = Classifier(replies)
    reading = classifier.read("Go away!", "en")

    assert (reading.intent, reading.confidence) == ("unsubscribe", 0.9)
    assert not_applied(reading, None, classifier.threshold, None) == "below the threshold 0.95"
    assert classifier.read("Please unsubscribe me", "en").intent == "other"  # en replaced
    assert classifier.read("Merci de me désinscrire", "en").intent == "unsubscribe"  # fr kept


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"en": [{"intent": "paid", "confidence": 0.9, "phrases": ["x"]}]}, "intent"),
        ({"en": [{"intent": "unsubscribe", "confidence": 1.5, "phrases": ["x"]}]}, "confidence"),
        ({"en": [{"intent": "unsubscribe", "confidence": 0.9, "patterns": ["(unclosed"]}]},
         "patterns.0: '(unclosed' is not a regular expression"),
        ({"en": [{"intent": "unsubscribe", "confidence": 0.9}]}, "at least one phrase"),
        ({"en": [{"intent": "need_time", "confidence": 0.9, "phrases": ["x"],
                  "reason": "damaged"}]}, "reason applies to order_problem rules only"),
    ],
)  # fmt: skip
def test_a_bad_rule_is_refused_at_load_with_its_path(rules: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"rules\.en\.0") as refused:
        Replies.model_validate({"rules": rules})
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("headers", "subject", "why"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Re: Reminder", "Auto-Submitted: auto-replied"),
        ({"X-Autoreply": "yes"}, "Re: Reminder", "X-Autoreply"),
        ({"X-Autorespond": "vacation"}, "Re: Reminder", "X-Autorespond"),
        ({"Precedence": "auto_reply"}, "Re: Reminder", "Precedence: auto_reply"),
        ({}, "Out of Office: Re: Reminder", "subject: out of office"),
        ({}, "Automatic reply: Reminder", "subject: automatic reply"),
        ({}, "Réponse automatique : Rappel", "subject: reponse automatique"),
        ({}, "Absence du bureau", "subject: absence"),
        ({}, "Abwesenheitsnotiz: Zahlungserinnerung", "subject: abwesenheitsnotiz"),
        ({}, "Automatische Antwort: Zahlungserinnerung", "subject: automatische antwort"),
    ],
)
def test_automatic_replies_are_known_by_their_headers_or_subject(
    policy: Policy, headers: dict[str, str], subject: str, why: str
) -> None:
    raw = reply("anna@example.com", "I already paid.", subject=subject, headers=headers)

    sorted_ = triage("test", raw, AutoReplies(policy.replies))

    assert (sorted_.kind, sorted_.why) == (AUTO_REPLY, why)


def test_auto_submitted_no_is_a_person_writing(policy: Policy) -> None:
    raw = reply("anna@example.com", "I already paid.", headers={"Auto-Submitted": "no"})

    assert triage("test", raw, AutoReplies(policy.replies)).kind == REPLY


@pytest.mark.parametrize(
    ("sample", "permanent", "status", "returned"),
    [
        ("postfix_hard.eml", True, "5.1.1", True),
        ("postfix_expired.eml", False, "4.4.1", True),  # Action: failed, but 4.x.x
        ("exim_hard.eml", True, None, True),  # X-Failed-Recipients, a quoted copy
        ("exchange_online_hard.eml", True, "5.1.10", True),
        ("exchange_legacy_hard.eml", True, None, False),  # by recipient only
        ("gmail_hard.eml", True, "5.1.1", True),
        ("gmail_delayed.eml", False, "4.2.2", True),
    ],
)
def test_each_bounce_layout_names_the_address_how_final_and_what_bounced(
    sample: str, permanent: bool, status: str | None, returned: bool
) -> None:
    mail = parse(bounce(sample, "anna@customer-mail.example", "<m1@collectflow.example>"))

    found = bounce_of(mail.message)

    assert found is not None
    [failure] = found.failures
    assert (failure.address, failure.permanent, failure.status) == (
        "anna@customer-mail.example", permanent, status,
    )  # fmt: skip
    assert found.returned_ids == (("<m1@collectflow.example>",) if returned else ())


def test_a_reply_is_no_bounce(policy: Policy) -> None:
    raw = reply("anna@example.com", "Your message did not reach me? I paid.")

    assert bounce_of(parse(raw).message) is None
    assert triage("t", raw, AutoReplies(policy.replies)).kind == REPLY


MALFORMED = [
    b"",
    b"\x00\xff\xfe garbage \x80\x81",
    b"Subject: =?x-unknown?q?=E9t=E9?=\nFrom: <<<>>>\nContent-Type: text/plain; charset=x-unknown"
    b"\n\n\xe9t\xe9 pay\xe9\n",
    b"From: a@b.c\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\nContent-Type: text/plain"
    b"\nContent-Transfer-Encoding: base64\n\n!!!notbase64===\n--zz",  # no closing boundary
    b"From: a@b.c\nContent-Type: multipart/report; report-type=delivery-status\n\nno parts",
    b"Content-Type: message/delivery-status\n\nAction: failed\nStatus: 5.1.1\n",
    b"From: a@b.c\nContent-Type: text/html\n\n<blockquote><div><p>unclosed",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_mail_is_read_without_failing(policy: Policy, raw: bytes) -> None:
    found = triage("test", raw, AutoReplies(policy.replies))

    assert found.kind in (BOUNCE, AUTO_REPLY, REPLY, UNREADABLE)
    assert found.key


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_no_bytes_make_the_reading_raise(raw: bytes) -> None:
    from collectflow.flows.policy.replies import Replies

    found = triage("test", raw, AutoReplies(Replies()))

    assert found.key
