"""The policy section for reading customers' replies (part of `policy.yaml`, key `replies`).

A reply to a reminder is read by rules a person can check: per language, phrases and regular
expressions, each naming the intent it signals and how sure it is. An intent at or above
`apply_threshold` is applied as if the customer had answered on the page; anything less goes
to an operator, who confirms it in one action. The rules are data so that a wrong reading
is fixed by editing the policy, and the reference (docs/policy.md) lists the shipped ones.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Intent = Literal["already_paid", "payment_failed", "order_problem", "need_time", "unsubscribe"]
"""What a reply may say; the same intents as the customer page (flows/feedback/answers.py)."""

OrderReason = Literal[
    "not_received", "wrong_amount", "damaged", "returned_or_cancelled", "charged_twice", "other"
]
"""The order problems the page offers; a rule for `order_problem` may name one."""

Confidence = Annotated[float, Field(strict=True, gt=0, le=1)]
Language = Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]


def folded(text: str) -> str:
    """Text as the rules see it: lower case, accents removed (déjà → deja), typographic
    apostrophes straight, runs of white space as one space. Phrases are folded the same way,
    so a rule matches a reply written with or without accents."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().replace("\u2019", "'"))
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(bare.split())


def unaccented(pattern: str) -> str:
    """A regular expression with the accents of its letters removed, to match folded text."""
    decomposed = unicodedata.normalize("NFKD", pattern.replace("\u2019", "'"))
    return "".join(char for char in decomposed if not unicodedata.combining(char))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplyRule(_Strict):
    """One reading: if any phrase or pattern is found in the reply, it says `intent`.

    Phrases match whole words (`paid` does not match `unpaid`); patterns are Python regular
    expressions, matched case-insensitively. Both see the reply folded (see `folded`), its
    quoted text and signature removed.
    """

    intent: Intent
    confidence: Confidence
    phrases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    reason: OrderReason | None = None

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"patterns.{index}: {pattern!r} is not a regular expression: {exc}"
                ) from None
        return patterns

    @model_validator(mode="after")
    def _says_something(self) -> ReplyRule:
        if not self.phrases and not self.patterns:
            raise ValueError("a rule needs at least one phrase or pattern")
        if any(not folded(phrase) for phrase in self.phrases):
            raise ValueError("phrases must not be empty")
        if self.reason is not None and self.intent != "order_problem":
            raise ValueError("reason applies to order_problem rules only")
        return self


def _rule(
    intent: Intent,
    confidence: float,
    phrases: tuple[str, ...] = (),
    patterns: tuple[str, ...] = (),
    reason: OrderReason | None = None,
) -> ReplyRule:
    return ReplyRule(
        intent=intent, confidence=confidence, phrases=phrases, patterns=patterns, reason=reason
    )


DEFAULT_RULES: dict[str, tuple[ReplyRule, ...]] = {
    "en": (
        _rule("already_paid", 0.9, ("already paid", "already settled", "payment has been made",
              "payment was made", "paid in full", "already transferred"),
              (r"\b(i|we)('ve| have)? (already |just )?"
               r"(paid|settled|transferred|sent the payment)\b",)),
        _rule("payment_failed", 0.85, ("payment failed", "payment did not go through",
              "payment didn't go through", "card was declined", "card declined",
              "payment was declined", "payment was rejected", "payment link does not work",
              "payment link doesn't work", "could not pay", "couldn't pay", "unable to pay")),
        _rule("order_problem", 0.85, ("never received", "not received", "haven't received",
              "have not received", "didn't receive", "did not receive", "never arrived",
              "never got"), reason="not_received"),
        _rule("order_problem", 0.85, ("wrong amount", "amount is wrong", "amount is incorrect",
              "incorrect amount", "overcharged"), reason="wrong_amount"),
        _rule("order_problem", 0.85, ("charged twice", "double charged", "charged me twice",
              "paid twice", "duplicate charge"), reason="charged_twice"),
        _rule("order_problem", 0.8, ("damaged", "arrived broken", "not as described", "defective"),
              reason="damaged"),
        _rule("order_problem", 0.8, ("returned it", "returned the", "cancelled my order",
              "canceled my order", "order was cancelled", "order was canceled"),
              reason="returned_or_cancelled"),
        _rule("order_problem", 0.6, ("dispute", "refund", "complaint")),
        _rule("need_time", 0.85, ("more time", "extension", "pay next week", "pay next month",
              "pay at the end of the month"),
              (r"\b(i|we)('ll| will| can| could| shall) (pay|settle|transfer)\b",
               r"\bpay (it |this |the invoice |everything )?(by|on|before)\b")),
        _rule("need_time", 0.6, ("payment plan", "instalments", "installments", "pay in parts")),
        _rule("unsubscribe", 0.9, ("unsubscribe", "stop emailing", "stop sending",
              "stop contacting", "remove me from", "do not contact", "don't contact",
              "no more emails", "opt out", "take me off")),
    ),
    "fr": (
        _rule("already_paid", 0.9, ("déjà payé", "déjà réglé", "déjà viré",
              "paiement a été effectué", "virement a été effectué", "règlement a été effectué",
              "virement effectué"),
              (r"\b(j'ai|nous avons) (déjà |bien )?"
               r"(payé|réglé|viré|effectué le (virement|paiement))\b",)),
        _rule("payment_failed", 0.85, ("paiement a échoué", "paiement échoué", "paiement refusé",
              "carte refusée", "carte a été refusée", "impossible de payer",
              "n'arrive pas à payer", "le lien ne fonctionne pas",
              "le lien de paiement ne marche pas")),
        _rule("order_problem", 0.85, ("pas reçu", "jamais reçu", "jamais été livré",
              "pas été livré", "toujours pas arrivé"), reason="not_received"),
        _rule("order_problem", 0.85, ("montant incorrect", "mauvais montant",
              "montant est faux", "montant erroné"), reason="wrong_amount"),
        _rule("order_problem", 0.85, ("débité deux fois", "prélevé deux fois", "payé deux fois",
              "facturé deux fois", "double prélèvement"), reason="charged_twice"),
        _rule("order_problem", 0.8, ("endommagé", "abîmé", "défectueux", "non conforme"),
              reason="damaged"),
        _rule("order_problem", 0.8, ("j'ai retourné", "commande annulée", "annulé ma commande",
              "renvoyé le colis"), reason="returned_or_cancelled"),
        _rule("order_problem", 0.6, ("litige", "remboursement", "réclamation", "conteste")),
        _rule("need_time", 0.85, ("plus de temps", "un délai", "délai supplémentaire",
              "la semaine prochaine", "fin du mois"),
              (r"\b(je|nous) (paierai|paierons|réglerai|réglerons|vais payer|allons payer"
               r"|vais régler|pourrai payer)\b",)),
        _rule("need_time", 0.6, ("échéancier", "en plusieurs fois", "paiement échelonné")),
        _rule("unsubscribe", 0.9, ("désabonner", "désinscrire", "ne plus recevoir",
              "ne me contactez plus", "arrêtez de m'envoyer", "arrêtez de m'écrire",
              "retirez-moi", "plus de mails", "plus d'e-mails")),
    ),
    "de": (
        _rule("already_paid", 0.9, ("bereits bezahlt", "schon bezahlt", "bereits überwiesen",
              "schon überwiesen", "bereits beglichen", "Zahlung ist erfolgt",
              "Zahlung wurde geleistet", "Betrag wurde überwiesen"),
              (r"\b(ich|wir) (habe|haben) (den betrag |die rechnung )?(bereits |schon )?"
               r"(bezahlt|überwiesen|beglichen)\b",)),
        _rule("payment_failed", 0.85, ("Zahlung fehlgeschlagen", "Zahlung ist fehlgeschlagen",
              "Karte abgelehnt", "Karte wurde abgelehnt", "Zahlung wurde abgelehnt",
              "kann nicht bezahlen", "konnte nicht bezahlen", "Link funktioniert nicht",
              "Zahlung funktioniert nicht")),
        _rule("order_problem", 0.85, ("nicht erhalten", "nie erhalten", "nicht angekommen",
              "nie angekommen", "nicht geliefert"), reason="not_received"),
        _rule("order_problem", 0.85, ("falscher Betrag", "Betrag ist falsch",
              "Betrag stimmt nicht"), reason="wrong_amount"),
        _rule("order_problem", 0.85, ("doppelt abgebucht", "zweimal abgebucht", "doppelt bezahlt",
              "zweimal bezahlt", "doppelt berechnet"), reason="charged_twice"),
        _rule("order_problem", 0.8, ("beschädigt", "defekt", "kaputt angekommen"),
              reason="damaged"),
        _rule("order_problem", 0.8, ("zurückgeschickt", "zurückgesendet", "storniert",
              "widerrufen"), reason="returned_or_cancelled"),
        _rule("order_problem", 0.6, ("Reklamation", "Rückerstattung", "Widerspruch",
              "Beanstandung")),
        _rule("need_time", 0.85, ("mehr Zeit", "Zahlungsaufschub", "Aufschub", "Zahlungsziel",
              "nächste Woche", "Ende des Monats", "Monatsende"),
              (r"\b(ich|wir) (werde|werden) (?!.{0,40}\b(nicht|kein)).{0,40}"
               r"\b(zahlen|bezahlen|überweisen|begleichen)\b",
               r"\b(ich|wir) (zahle|zahlen|überweise|überweisen) (bis|am)\b")),
        _rule("need_time", 0.6, ("Ratenzahlung", "in Raten", "Teilzahlung")),
        _rule("unsubscribe", 0.9, ("abmelden", "abbestellen", "austragen", "keine E-Mails mehr",
              "keine Mails mehr", "keine Emails mehr", "nicht mehr kontaktieren",
              "nicht mehr anschreiben")),
    ),
}  # fmt: skip
"""The shipped rules, per language (listed in docs/policy.md)."""

DEFAULT_OUT_OF_OFFICE: dict[str, tuple[str, ...]] = {
    "en": ("out of office", "out of the office", "automatic reply", "auto reply", "autoreply",
           "auto-reply", "away from the office", "absence"),
    "fr": ("absence", "absent du bureau", "réponse automatique", "message automatique",
           "hors du bureau"),
    "de": ("Abwesenheitsnotiz", "Abwesenheit", "automatische Antwort", "nicht im Büro",
           "außer Haus"),
}  # fmt: skip
"""Subjects of out-of-office mail, per language (matched folded, anywhere in the subject)."""


class Replies(_Strict):
    """How replies are read (flows/feedback/classify.py).

    - `apply_threshold`: an intent read with at least this confidence is applied as the
      page's answer would be; below it, the reply waits for an operator
      (`reply_needs_reading`). An opt-out or an order problem below it is never applied.
    - `rules`: per language, the rules of that language; a language named here replaces the
      shipped rules of that language (the others stay), an empty list switches it off.
    - `out_of_office`: per language, subject phrases that mark an automatic reply (added
      to the RFC 3834 headers, which always count).
    """

    apply_threshold: Confidence = 0.8
    rules: dict[Language, tuple[ReplyRule, ...]] = DEFAULT_RULES
    out_of_office: dict[Language, tuple[str, ...]] = DEFAULT_OUT_OF_OFFICE

    @field_validator("rules")
    @classmethod
    def _over_the_shipped(
        cls, rules: dict[str, tuple[ReplyRule, ...]]
    ) -> dict[str, tuple[ReplyRule, ...]]:
        return {**DEFAULT_RULES, **rules}

    @field_validator("out_of_office")
    @classmethod
    def _over_the_shipped_subjects(
        cls, subjects: dict[str, tuple[str, ...]]
    ) -> dict[str, tuple[str, ...]]:
        return {**DEFAULT_OUT_OF_OFFICE, **subjects}
