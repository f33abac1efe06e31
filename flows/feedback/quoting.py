"""What the customer wrote, without what they quoted: a reply carries our reminder below it
("On ... wrote:", "> ..."), and the reminder's own words ("if you have already paid", "pay
now") would otherwise be read as the customer's.

Removed before reading: lines quoted with ">"; everything from the first attribution line
(en "On ... wrote:", fr "Le ... a écrit :", de "Am ... schrieb ...:", also when the client
wrapped it over two lines), from an "Original Message" / "Message d'origine" / "Ursprüngliche
Nachricht" / "Forwarded message" separator, or from an Outlook header block ("From:"/"De :"/
"Von:" followed by "Sent:"/"Envoyé :"/"Gesendet:" or "To:"...); and the signature, from a "-- "
line or a "Sent from my ..." line on.
"""

from __future__ import annotations

import re

ATTRIBUTION = re.compile(
    r"^(?:on\b.*\bwrote|le\b.*\ba\s+[ée]crit|am\b.*\bschrieb\b.*|.*\bschrieb)\s*:\s*$",
    re.IGNORECASE,
)
SEPARATOR = re.compile(
    r"^\s*[-_=]{2,}\s*(?:original message|forwarded message|message d'origine"
    r"|message transf[ée]r[ée]|urspr[üu]ngliche nachricht|weitergeleitete nachricht)"
    r"\s*[-_=]{2,}\s*$"
    r"|^\s*_{8,}\s*$",
    re.IGNORECASE,
)
HEADER_FROM = re.compile(r"^\s*\*?(?:from|de|von)\s*:\*?\s", re.IGNORECASE)
HEADER_NEXT = re.compile(
    r"^\s*\*?(?:sent|date|to|subject|envoy[ée]|[àa]|objet|gesendet|datum|an|betreff)\s*:",
    re.IGNORECASE,
)
SIGNATURE = re.compile(
    r"^(?:--|—|__)\s*$|^(?:sent from my|envoy[ée] de mon|von meinem .* gesendet|get outlook for)",
    re.IGNORECASE,
)
FIRST_LINES = 5
FIRST_LINES_CHARS = 500


def own_words(body: str) -> str:
    """The text of a reply with quoted text and signature removed (see the module)."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if _starts_quote(lines, index) or SIGNATURE.match(line.rstrip()):
            break
        if stripped.startswith(">"):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept).strip()


def _starts_quote(lines: list[str], index: int) -> bool:
    """Whether the quoted part begins at `lines[index]`."""
    line = lines[index].strip()
    if not line:
        return False
    following = lines[index + 1].strip() if index + 1 < len(lines) else ""
    if ATTRIBUTION.match(line) or SEPARATOR.match(line):
        return True
    wrapped = f"{line} {following}"
    if following and ATTRIBUTION.match(wrapped) and re.match(r"(?i)(?:on|le|am)\b", line):
        return True
    if HEADER_FROM.match(line):
        window = lines[index + 1 : index + 4]
        return any(HEADER_NEXT.match(other) for other in window)
    return False


def first_lines(text: str) -> str:
    """The first few non-empty lines of what the customer wrote, for an operator to read."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    shown = "\n".join(lines[:FIRST_LINES])
    if len(shown) > FIRST_LINES_CHARS:
        shown = shown[: FIRST_LINES_CHARS - 1].rstrip() + "…"
    return shown
