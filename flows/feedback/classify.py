"""Reading a reply: which intent the policy's rules find in what the customer wrote, and how
sure they are.

The rules of the customer's language are tried first, then, if none matched, those of the
other languages (a customer may answer in another language than their messages'). Among the
rules that match, each intent counts with its most confident rule; the reply says the most
confident intent. When rules of another intent match too, the reply is ambiguous ("I already
paid, stop writing to me"), and its confidence is the difference between the two, so it goes
to a person rather than being applied. Nothing matched: `other`, confidence 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from collectflow.flows.policy.replies import Replies, ReplyRule, folded, unaccented

OTHER = "other"


@dataclass(frozen=True)
class Reading:
    """What a reply says, as the rules read it."""

    intent: str  # an intent of the rules, or `other`
    confidence: float
    rule: str | None = None  # the deciding rule, as `language.index` into policy.replies.rules
    reason: str | None = None  # order_problem: the rule's reason
    matched: str | None = None  # the words that matched, for the operator
    also: tuple[str, ...] = ()  # other intents found in the same reply


@dataclass(frozen=True)
class _Compiled:
    rule_id: str
    rule: ReplyRule
    expressions: tuple[re.Pattern[str], ...]


class Classifier:
    """The policy's reply rules, compiled once for a run."""

    def __init__(self, replies: Replies) -> None:
        self.threshold = replies.apply_threshold
        self.languages = tuple(replies.rules)
        self._rules = {
            language: [_compile(f"{language}.{index}", rule) for index, rule in enumerate(rules)]
            for language, rules in replies.rules.items()
        }

    def read(self, text: str, language: str | None) -> Reading:
        """The intent `text` (the customer's own words) states, trying `language` first."""
        words = folded(text)
        primary = (language or "").split("-")[0].split("_")[0].lower()
        order = [primary] if primary in self._rules else []
        order += [other for other in self._rules if other != primary]
        for candidate in order:
            hits = [hit for compiled in self._rules[candidate] if (hit := _hit(compiled, words))]
            if hits:
                return _decide(hits)
        return Reading(OTHER, 0.0)


def _compile(rule_id: str, rule: ReplyRule) -> _Compiled:
    expressions = []
    if rule.phrases:
        phrases = sorted({folded(phrase) for phrase in rule.phrases}, key=len, reverse=True)
        alternatives = "|".join(re.escape(phrase) for phrase in phrases)
        expressions.append(re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"))
    expressions += [re.compile(unaccented(pattern), re.IGNORECASE) for pattern in rule.patterns]
    return _Compiled(rule_id, rule, tuple(expressions))


def _hit(compiled: _Compiled, words: str) -> tuple[_Compiled, str] | None:
    for expression in compiled.expressions:
        match = expression.search(words)
        if match:
            return compiled, match.group(0)
    return None


def _decide(hits: list[tuple[_Compiled, str]]) -> Reading:
    best: dict[str, tuple[_Compiled, str]] = {}
    for compiled, matched in hits:
        intent = compiled.rule.intent
        if intent not in best or compiled.rule.confidence > best[intent][0].rule.confidence:
            best[intent] = (compiled, matched)
    ranked = sorted(best.values(), key=lambda hit: hit[0].rule.confidence, reverse=True)
    (top, matched), others = ranked[0], ranked[1:]
    confidence = top.rule.confidence - (others[0][0].rule.confidence if others else 0.0)
    return Reading(
        intent=top.rule.intent,
        confidence=round(confidence, 4),
        rule=top.rule_id,
        reason=top.rule.reason,
        matched=matched,
        also=tuple(hit.rule.intent for hit, _ in others),
    )
