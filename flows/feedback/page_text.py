"""The customer page's words in English, French and German.

The page speaks the customer's language (`customers.locale`, falling back to English) like
the emails do; its strings are here rather than in per-language copies of the page, so the
layout exists once and every language has every string (a test compares the keys). Strings
are plain text with `{placeholders}` filled by `Translator`; the page's template escapes
them, so none may carry markup. French uses a no-break space before `:` and a narrow one
before `?`, `!` and `;`, as French typography wants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from babel import Locale, UnknownLocaleError, negotiate_locale
from markupsafe import Markup, escape

ENGLISH = "en"
NBSP = "\u00a0"  # before a French colon, inside a French amount
NNBSP = "\u202f"  # before French ? ! ;

EN: dict[str, str] = {
    "page_title": "Your invoices",
    "greeting": "Hello {name},",
    "lead": "Here is where the invoices of our message stand today, {today}.",
    "col_invoice": "Invoice",
    "col_due": "Due",
    "col_amount": "Amount",
    "col_balance": "To pay today",
    "state_open": "Open",
    "state_partly paid": "Partly paid",
    "state_paid": "Paid",
    "state_disputed": "Under review",
    "state_void": "Cancelled",
    "pay": "Pay",
    "pay_label": "Pay invoice {number} online",
    "due_on": "due {date}",
    "stand_in": "Our usual payment service is temporarily unavailable, so the links below take"
    " you to {label} instead.",
    "total": "Still to pay",
    "all_paid": "Everything in this message is paid. Thank you!",
    "answers_title": "Tell us where things stand",
    "answers_lead": "Choose what applies to you. Your answer goes straight to our accounts"
    " team, and our reminders follow it.",
    "intent_already_paid": "I have already paid",
    "intent_payment_failed": "My payment failed, or I want to pay now",
    "intent_order_problem": "There is a problem with my order or invoice",
    "intent_need_time": "I need more time",
    "intent_unsubscribe": "Stop emailing me",
    "about_already_paid": "Tell us how you paid: we hold our reminders for {days} business days"
    " while we look for your payment.",
    "about_payment_failed": "We show you the ways to pay and let our team know that a"
    " payment did not go through.",
    "about_order_problem": "Reminders stop for the invoices you choose until our team has"
    " looked into it.",
    "about_need_time": "Tell us by when you can pay (at most {days} days from today): we will"
    " not remind you before then.",
    "about_unsubscribe": "We will stop sending you emails about your invoices. The amounts"
    " remain due, and this page stays open to pay them.",
    "field_invoices": "Which invoices?",
    "invoice_choice": "{number}, {owed}",
    "field_paid_on": "Date of payment",
    "field_amount_paid": "Amount paid",
    "field_currency": "Currency",
    "field_reference": "Payment reference",
    "hint_reference": "For example the reference of your bank transfer.",
    "field_reason": "What is wrong?",
    "field_text": "Tell us more",
    "hint_text": "At most {max} characters.",
    "field_promise_date": "I will pay by",
    "hint_promise_date": "A date until {latest}.",
    "field_amount_promised": "Amount I will pay by then, if only part",
    "optional": "optional",
    "reason_choose": "Choose…",
    "reason_not_received": "I did not receive the order",
    "reason_wrong_amount": "The amount is wrong",
    "reason_damaged": "Damaged or not as described",
    "reason_returned_or_cancelled": "Already returned or cancelled",
    "reason_charged_twice": "I was charged twice",
    "reason_other": "Something else",
    "send_already_paid": "Send my answer",
    "send_payment_failed": "Show me how to pay",
    "send_order_problem": "Send my answer",
    "send_need_time": "Send my answer",
    "send_unsubscribe": "Yes, stop emailing me",
    "form_has_errors": "Please check the fields marked below.",
    "error_choose_invoice": "Choose at least one invoice.",
    "error_unknown_invoice": "Choose among the invoices of this message.",
    "error_date": "Enter a date like {example}.",
    "error_paid_in_future": "The payment date cannot be in the future.",
    "error_promise_required": "Enter the date by which you will pay.",
    "error_promise_past": "Choose today or a later date.",
    "error_promise_too_far": "We can accept a date until {latest}. For a longer delay, please"
    " write to us.",
    "error_amount": "Enter an amount like {example}.",
    "error_amount_zero": "The amount must be more than zero.",
    "error_amount_too_high": "That is more than the {owed} still to pay.",
    "error_currency": "Choose the currency of the amount.",
    "error_too_long": "At most {max} characters (this has {length}).",
    "error_reason": "Choose what is wrong.",
    "error_refused": "We could not accept this answer: {reason}",
    "done_title": "Thank you, we have your answer",
    "done_already_paid": "We are holding our reminders for these invoices for {days} business"
    " days while we look for your payment. If we cannot find it by then, someone from our"
    " team will contact you.",
    "done_payment_failed": "You can pay with the links below. If the payment fails again,"
    " reply to our email and we will find another way together.",
    "done_order_problem": "We have stopped the reminders for these invoices and passed your"
    " message on to our team, who will get back to you.",
    "done_need_time": "We have noted that you will pay by {date}. We will not send you"
    " reminders before then.",
    "done_need_time_undated": "We have noted the date you gave us. We will not send you"
    " reminders before then.",
    "done_unsubscribe": "You will not receive any more emails from us about your invoices."
    " The amounts shown remain due; you can still pay them from this page.",
    "back": "Back to your invoices",
    "contact": "Questions? Write to {name} at {email}.",
    "contact_no_email": "Questions? Reply to our email.",
    "signed": "{name}, {company}",
    "privacy": "This page is personal: please do not share its address.",
    "bad_link_title": "This link is not valid",
    "bad_link": "Please open the page with the link in the email you received, exactly as it is.",
    "expired_title": "This link has expired",
    "expired": "For your security, the link in our email worked until {date}. Use the link in"
    " a more recent email from us, or write to {name} at {company}: {email}.",
    "expired_no_email": "For your security, the link in our email worked until {date}. Use the"
    " link in a more recent email from us, or reply to our email and {name} at {company} will"
    " help you.",
    "forbidden_title": "This form could not be accepted",
    "forbidden": "Please open the page again with the link in your email, and send your"
    " answer from there.",
    "too_many_title": "Too many answers",
    "too_many": "We have received many answers from this link in the last hour. Please try"
    " again later.",
    "too_large_title": "This form is too large",
    "too_large": "Please shorten your text and send it again.",
    "bad_request_title": "This request could not be understood",
    "bad_request": "Please open the page with the link in your email.",
}

FR: dict[str, str] = {
    "page_title": "Vos factures",
    "greeting": "Bonjour {name},",
    "lead": "Voici où en sont aujourd'hui, {today}, les factures de notre message.",
    "col_invoice": "Facture",
    "col_due": "Échéance",
    "col_amount": "Montant",
    "col_balance": "Reste à payer",
    "state_open": "À payer",
    "state_partly paid": "Payée en partie",
    "state_paid": "Payée",
    "state_disputed": "En cours d'examen",
    "state_void": "Annulée",
    "pay": "Payer",
    "pay_label": "Payer la facture {number} en ligne",
    "due_on": "échéance le {date}",
    "stand_in": f"Notre service de paiement habituel est momentanément indisponible{NBSP}: les"
    " liens ci-dessous vous dirigent donc vers {label}.",
    "total": "Reste à payer",
    "all_paid": f"Toutes les factures de ce message sont payées. Merci{NNBSP}!",
    "answers_title": "Dites-nous où vous en êtes",
    "answers_lead": "Choisissez ce qui correspond à votre situation. Votre réponse est"
    " transmise directement à notre service comptable, et nos relances en tiennent compte.",
    "intent_already_paid": "J'ai déjà payé",
    "intent_payment_failed": "Mon paiement a échoué, ou je veux payer maintenant",
    "intent_order_problem": "Il y a un problème avec ma commande ou ma facture",
    "intent_need_time": "J'ai besoin d'un délai",
    "intent_unsubscribe": "Ne plus recevoir nos e-mails",
    "about_already_paid": f"Indiquez-nous comment vous avez payé{NBSP}: nous suspendons nos"
    " relances pendant {days} jours ouvrés, le temps de retrouver votre paiement.",
    "about_payment_failed": "Nous vous indiquons comment payer et signalons à notre équipe"
    " qu'un paiement n'a pas abouti.",
    "about_order_problem": "Les relances sont suspendues pour les factures choisies jusqu'à"
    " ce que notre équipe ait examiné la question.",
    "about_need_time": "Indiquez-nous la date à laquelle vous pourrez payer (au plus tard"
    f" dans {{days}} jours){NBSP}: nous ne vous relancerons pas d'ici là.",
    "about_unsubscribe": "Nous cesserons de vous envoyer des e-mails au sujet de vos"
    " factures. Les montants restent dus, et cette page reste ouverte pour les régler.",
    "field_invoices": f"Quelles factures{NNBSP}?",
    "invoice_choice": "{number}, {owed}",
    "field_paid_on": "Date du paiement",
    "field_amount_paid": "Montant payé",
    "field_currency": "Devise",
    "field_reference": "Référence du paiement",
    "hint_reference": "Par exemple la référence de votre virement.",
    "field_reason": f"Quel est le problème{NNBSP}?",
    "field_text": "Précisions",
    "hint_text": "{max} caractères au maximum.",
    "field_promise_date": "Je paierai au plus tard le",
    "hint_promise_date": "Une date jusqu'au {latest}.",
    "field_amount_promised": "Montant que je paierai d'ici là, si ce n'est qu'une partie",
    "optional": "facultatif",
    "reason_choose": "Choisissez…",
    "reason_not_received": "Je n'ai pas reçu la commande",
    "reason_wrong_amount": "Le montant est incorrect",
    "reason_damaged": "Article endommagé ou non conforme",
    "reason_returned_or_cancelled": "Déjà retourné ou annulé",
    "reason_charged_twice": "J'ai été débité deux fois",
    "reason_other": "Autre chose",
    "send_already_paid": "Envoyer ma réponse",
    "send_payment_failed": "Voir comment payer",
    "send_order_problem": "Envoyer ma réponse",
    "send_need_time": "Envoyer ma réponse",
    "send_unsubscribe": "Oui, ne plus m'envoyer d'e-mails",
    "form_has_errors": "Veuillez vérifier les champs signalés ci-dessous.",
    "error_choose_invoice": "Choisissez au moins une facture.",
    "error_unknown_invoice": "Choisissez parmi les factures de ce message.",
    "error_date": "Saisissez une date au format {example}.",
    "error_paid_in_future": "La date du paiement ne peut pas être dans le futur.",
    "error_promise_required": "Indiquez la date à laquelle vous paierez.",
    "error_promise_past": "Choisissez aujourd'hui ou une date ultérieure.",
    "error_promise_too_far": "Nous pouvons accepter une date jusqu'au {latest}. Pour un délai"
    " plus long, écrivez-nous.",
    "error_amount": "Saisissez un montant, par exemple {example}.",
    "error_amount_zero": "Le montant doit être supérieur à zéro.",
    "error_amount_too_high": "C'est plus que les {owed} restant à payer.",
    "error_currency": "Choisissez la devise du montant.",
    "error_too_long": "{max} caractères au maximum (ici {length}).",
    "error_reason": "Choisissez le problème.",
    "error_refused": f"Nous n'avons pas pu accepter cette réponse{NBSP}: {{reason}}",
    "done_title": "Merci, nous avons bien reçu votre réponse",
    "done_already_paid": "Nous suspendons nos relances pour ces factures pendant {days} jours"
    " ouvrés, le temps de retrouver votre paiement. Si nous ne le trouvons pas d'ici là, une"
    " personne de notre équipe vous contactera.",
    "done_payment_failed": "Vous pouvez payer avec les liens ci-dessous. Si le paiement échoue"
    " de nouveau, répondez à notre e-mail et nous trouverons ensemble une autre solution.",
    "done_order_problem": "Nous avons suspendu les relances pour ces factures et transmis"
    " votre message à notre équipe, qui reviendra vers vous.",
    "done_need_time": "Nous avons bien noté que vous paierez d'ici le {date}. Nous ne vous"
    " enverrons pas de relance d'ici là.",
    "done_need_time_undated": "Nous avons bien noté la date que vous nous avez indiquée. Nous"
    " ne vous enverrons pas de relance d'ici là.",
    "done_unsubscribe": "Vous ne recevrez plus d'e-mails de notre part au sujet de vos"
    f" factures. Les montants indiqués restent dus{NNBSP}; vous pouvez toujours les régler"
    " depuis cette page.",
    "back": "Retour à vos factures",
    "contact": f"Une question{NNBSP}? Écrivez à {{name}}{NBSP}: {{email}}",
    "contact_no_email": f"Une question{NNBSP}? Répondez simplement à notre e-mail.",
    "signed": "{name}, {company}",
    "privacy": f"Cette page vous est personnelle{NBSP}: merci de ne pas partager son adresse.",
    "bad_link_title": "Ce lien n'est pas valide",
    "bad_link": "Ouvrez la page avec le lien de l'e-mail que vous avez reçu, tel quel.",
    "expired_title": "Ce lien a expiré",
    "expired": "Pour votre sécurité, le lien de notre e-mail était valable jusqu'au {date}."
    " Utilisez le lien d'un e-mail plus récent de notre part, ou écrivez à {name}, {company}"
    f"{NBSP}: {{email}}",
    "expired_no_email": "Pour votre sécurité, le lien de notre e-mail était valable jusqu'au"
    " {date}. Utilisez le lien d'un e-mail plus récent de notre part, ou répondez à notre"
    " e-mail et {name}, {company}, vous aidera.",
    "forbidden_title": "Ce formulaire n'a pas pu être accepté",
    "forbidden": "Ouvrez de nouveau la page avec le lien de votre e-mail et envoyez votre"
    " réponse depuis celle-ci.",
    "too_many_title": "Trop de réponses",
    "too_many": "Nous avons reçu de nombreuses réponses depuis ce lien au cours de la"
    " dernière heure. Veuillez réessayer plus tard.",
    "too_large_title": "Ce formulaire est trop volumineux",
    "too_large": "Raccourcissez votre texte et envoyez-le de nouveau.",
    "bad_request_title": "Cette demande n'a pas pu être comprise",
    "bad_request": "Ouvrez la page avec le lien de votre e-mail.",
}

DE: dict[str, str] = {
    "page_title": "Ihre Rechnungen",
    "greeting": "Guten Tag {name},",
    "lead": "hier sehen Sie den heutigen Stand ({today}) der Rechnungen aus unserer Nachricht.",
    "col_invoice": "Rechnung",
    "col_due": "Fällig",
    "col_amount": "Betrag",
    "col_balance": "Heute offen",
    "state_open": "Offen",
    "state_partly paid": "Teilweise bezahlt",
    "state_paid": "Bezahlt",
    "state_disputed": "In Prüfung",
    "state_void": "Storniert",
    "pay": "Bezahlen",
    "pay_label": "Rechnung {number} online bezahlen",
    "due_on": "fällig am {date}",
    "stand_in": "Unser üblicher Zahlungsdienst ist vorübergehend nicht erreichbar; die Links"
    " unten führen Sie daher zu {label}.",
    "total": "Noch offen",
    "all_paid": "Alle Rechnungen aus dieser Nachricht sind bezahlt. Vielen Dank!",
    "answers_title": "Sagen Sie uns, wie es aussieht",
    "answers_lead": "Wählen Sie aus, was auf Sie zutrifft. Ihre Antwort geht direkt an unsere"
    " Buchhaltung, und unsere Erinnerungen richten sich danach.",
    "intent_already_paid": "Ich habe bereits bezahlt",
    "intent_payment_failed": "Meine Zahlung ist fehlgeschlagen, oder ich möchte jetzt bezahlen",
    "intent_order_problem": "Es gibt ein Problem mit meiner Bestellung oder Rechnung",
    "intent_need_time": "Ich brauche mehr Zeit",
    "intent_unsubscribe": "Keine E-Mails mehr senden",
    "about_already_paid": "Teilen Sie uns mit, wie Sie bezahlt haben: Wir setzen unsere"
    " Erinnerungen {days} Werktage lang aus, während wir Ihre Zahlung suchen.",
    "about_payment_failed": "Wir zeigen Ihnen, wie Sie bezahlen können, und informieren unser"
    " Team, dass eine Zahlung nicht geklappt hat.",
    "about_order_problem": "Für die ausgewählten Rechnungen pausieren die Erinnerungen, bis"
    " unser Team die Sache geprüft hat.",
    "about_need_time": "Nennen Sie uns das Datum, bis zu dem Sie bezahlen können (höchstens"
    " {days} Tage ab heute): Bis dahin erinnern wir Sie nicht.",
    "about_unsubscribe": "Wir senden Ihnen keine E-Mails mehr zu Ihren Rechnungen. Die"
    " Beträge bleiben fällig, und auf dieser Seite können Sie sie weiterhin bezahlen.",
    "field_invoices": "Welche Rechnungen?",
    "invoice_choice": "{number}, {owed}",
    "field_paid_on": "Zahlungsdatum",
    "field_amount_paid": "Gezahlter Betrag",
    "field_currency": "Währung",
    "field_reference": "Zahlungsreferenz",
    "hint_reference": "Zum Beispiel der Verwendungszweck Ihrer Überweisung.",
    "field_reason": "Was ist das Problem?",
    "field_text": "Weitere Angaben",
    "hint_text": "Höchstens {max} Zeichen.",
    "field_promise_date": "Ich bezahle bis spätestens",
    "hint_promise_date": "Ein Datum bis zum {latest}.",
    "field_amount_promised": "Betrag, den ich bis dahin zahle, falls nur ein Teil",
    "optional": "optional",
    "reason_choose": "Bitte wählen…",
    "reason_not_received": "Ich habe die Bestellung nicht erhalten",
    "reason_wrong_amount": "Der Betrag ist falsch",
    "reason_damaged": "Beschädigt oder nicht wie beschrieben",
    "reason_returned_or_cancelled": "Bereits zurückgeschickt oder storniert",
    "reason_charged_twice": "Mir wurde doppelt abgebucht",
    "reason_other": "Etwas anderes",
    "send_already_paid": "Antwort senden",
    "send_payment_failed": "Zahlungswege anzeigen",
    "send_order_problem": "Antwort senden",
    "send_need_time": "Antwort senden",
    "send_unsubscribe": "Ja, keine E-Mails mehr senden",
    "form_has_errors": "Bitte prüfen Sie die unten markierten Felder.",
    "error_choose_invoice": "Wählen Sie mindestens eine Rechnung aus.",
    "error_unknown_invoice": "Wählen Sie unter den Rechnungen dieser Nachricht.",
    "error_date": "Geben Sie ein Datum im Format {example} ein.",
    "error_paid_in_future": "Das Zahlungsdatum darf nicht in der Zukunft liegen.",
    "error_promise_required": "Geben Sie das Datum an, bis zu dem Sie bezahlen.",
    "error_promise_past": "Wählen Sie heute oder ein späteres Datum.",
    "error_promise_too_far": "Wir können ein Datum bis zum {latest} annehmen. Für einen"
    " längeren Aufschub schreiben Sie uns bitte.",
    "error_amount": "Geben Sie einen Betrag ein, zum Beispiel {example}.",
    "error_amount_zero": "Der Betrag muss größer als null sein.",
    "error_amount_too_high": "Das ist mehr als die noch offenen {owed}.",
    "error_currency": "Wählen Sie die Währung des Betrags.",
    "error_too_long": "Höchstens {max} Zeichen (hier {length}).",
    "error_reason": "Wählen Sie das Problem aus.",
    "error_refused": "Wir konnten diese Antwort nicht annehmen: {reason}",
    "done_title": "Vielen Dank, Ihre Antwort ist bei uns angekommen",
    "done_already_paid": "Wir setzen unsere Erinnerungen zu diesen Rechnungen {days} Werktage"
    " lang aus, während wir Ihre Zahlung suchen. Finden wir sie bis dahin nicht, meldet sich"
    " jemand aus unserem Team bei Ihnen.",
    "done_payment_failed": "Sie können über die Links unten bezahlen. Schlägt die Zahlung"
    " erneut fehl, antworten Sie auf unsere E-Mail, und wir finden gemeinsam einen anderen"
    " Weg.",
    "done_order_problem": "Wir haben die Erinnerungen zu diesen Rechnungen gestoppt und Ihre"
    " Nachricht an unser Team weitergegeben, das sich bei Ihnen melden wird.",
    "done_need_time": "Wir haben notiert, dass Sie bis zum {date} bezahlen. Bis dahin senden"
    " wir Ihnen keine Erinnerungen.",
    "done_need_time_undated": "Wir haben das Datum notiert, das Sie uns genannt haben. Bis"
    " dahin senden wir Ihnen keine Erinnerungen.",
    "done_unsubscribe": "Sie erhalten von uns keine E-Mails mehr zu Ihren Rechnungen. Die"
    " angezeigten Beträge bleiben fällig; Sie können sie weiterhin auf dieser Seite bezahlen.",
    "back": "Zurück zu Ihren Rechnungen",
    "contact": "Fragen? Schreiben Sie an {name}: {email}",
    "contact_no_email": "Fragen? Antworten Sie einfach auf unsere E-Mail.",
    "signed": "{name}, {company}",
    "privacy": "Diese Seite ist persönlich: Bitte geben Sie ihre Adresse nicht weiter.",
    "bad_link_title": "Dieser Link ist ungültig",
    "bad_link": "Bitte öffnen Sie die Seite über den Link in der E-Mail, die Sie erhalten"
    " haben, und zwar unverändert.",
    "expired_title": "Dieser Link ist abgelaufen",
    "expired": "Zu Ihrer Sicherheit galt der Link in unserer E-Mail bis zum {date}. Verwenden"
    " Sie den Link aus einer neueren E-Mail von uns, oder schreiben Sie an {name}, {company}:"
    " {email}",
    "expired_no_email": "Zu Ihrer Sicherheit galt der Link in unserer E-Mail bis zum {date}."
    " Verwenden Sie den Link aus einer neueren E-Mail von uns, oder antworten Sie auf unsere"
    " E-Mail, und {name}, {company}, hilft Ihnen weiter.",
    "forbidden_title": "Dieses Formular konnte nicht angenommen werden",
    "forbidden": "Bitte öffnen Sie die Seite erneut über den Link in Ihrer E-Mail und senden"
    " Sie Ihre Antwort von dort.",
    "too_many_title": "Zu viele Antworten",
    "too_many": "Über diesen Link sind in der letzten Stunde sehr viele Antworten"
    " eingegangen. Bitte versuchen Sie es später noch einmal.",
    "too_large_title": "Dieses Formular ist zu groß",
    "too_large": "Bitte kürzen Sie Ihren Text und senden Sie ihn erneut.",
    "bad_request_title": "Diese Anfrage konnte nicht verstanden werden",
    "bad_request": "Bitte öffnen Sie die Seite über den Link in Ihrer E-Mail.",
}

TEXTS: dict[str, dict[str, str]] = {"en": EN, "fr": FR, "de": DE}
LANGUAGES = tuple(TEXTS)


class Translator:
    """The page's strings in one language: `t("key", name=...)` fills the placeholders."""

    def __init__(self, language: str) -> None:
        self.language = language if language in TEXTS else ENGLISH
        self._texts: Mapping[str, str] = TEXTS[self.language]

    def __call__(self, key: str, **values: Any) -> str:
        return self._texts[key].format(**values) if values else self._texts[key]

    def markup(self, key: str, **values: Any) -> Markup:
        """The string as HTML: itself escaped, each value escaped unless it is markup already
        (a link the page built), so a link can sit inside a translated sentence."""
        return escape(self._texts[key]).format(**values)


def language_of(locale: str | None) -> str:
    """The page's language for a customer locale (`fr_CA` -> fr); English when we have not
    translated the page into it."""
    if not locale:
        return ENGLISH
    try:
        language = Locale.parse(locale.replace("-", "_")).language
    except (UnknownLocaleError, ValueError):
        return ENGLISH
    return language if language in TEXTS else ENGLISH


def language_from_header(accept_language: str | None) -> str:
    """The page's language for a visitor we know nothing about (a bad link): the best match
    of the browser's Accept-Language, else English. Nothing about any customer is used."""
    wanted = []
    for part in (accept_language or "").split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and quality > 0:
            wanted.append((quality, tag.strip().replace("-", "_")))
    ordered = [tag for _, tag in sorted(wanted, key=lambda pair: -pair[0])]
    return negotiate_locale(ordered, list(LANGUAGES), sep="_") or ENGLISH
