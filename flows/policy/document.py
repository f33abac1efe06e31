"""The collections policy: segments, ladders, escalation, attribution. Validated data, not code.

A bad policy is refused at load with the path of the bad key. Segment conditions are
structured (`{on_time_ratio: {gte: 0.9}}`, combinable with `all`, `any`, `not`) and compile to
SQL over the `customer_features` table, so segmentation stays set-based.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Table, and_, not_, or_, true
from sqlalchemy.sql.expression import ColumnElement

from collectflow.flows.errors import PolicyError
from collectflow.flows.policy.cases import Pauses
from collectflow.flows.policy.contact import Contact
from collectflow.flows.policy.diagnosis import Diagnosis, Outage
from collectflow.flows.policy.feedback import Feedback
from collectflow.flows.policy.gateways import Gateway, check_url_template, default_gateway
from collectflow.flows.policy.measurement import Measurement
from collectflow.flows.policy.replies import Replies
from collectflow.flows.policy.risk import Risk
from collectflow.flows.policy.types import Days, OffsetDays, PositiveDays

FEATURES: dict[str, str] = {
    "invoices_issued": "invoices issued in the trailing window (count)",
    "invoices_paid": "of those, invoices fully paid by the as-of date (count)",
    "on_time_ratio": "paid invoices paid on or before their due date / paid invoices (0-1; "
    "empty when nothing was paid yet)",
    "avg_days_late": "mean days past due at payment over paid invoices (days, 0 when on time)",
    "open_balance": "money owed on all open invoices (currency units, summed as numbers)",
    "overdue_balance": "money owed on invoices past their due date (currency units)",
    "open_invoices": "invoices with money owed (count)",
    "oldest_overdue_days": "days since the due date of the oldest overdue invoice (days, 0 none)",
    "failed_payments_30d": "failed payment attempts in the last failed_payment_days (count)",
    "disputes": "invoices currently disputed, in the ledger or by an open dispute (count)",
    "tenure_days": "days since the customer's first invoice (days)",
    "p90_days_late": "90th percentile (nearest rank) of days past due at payment over paid "
    "invoices (days, 0 when on time; empty when nothing was paid yet)",
    "failed_technical_30d": "of failed_payments_30d, those failing for a technical reason "
    "(gateway error, timeout, processing error) (count)",
    "failed_customer_30d": "of failed_payments_30d, those failing for a customer reason "
    "(declined, insufficient funds, expired card) (count)",
    "broken_promises": "promises to pay broken in the trailing window (count)",
    "failed_order_30d": "of failed_payments_30d, those failing for an order reason "
    "(product not received, subscription canceled) (count)",
    "very_late_ratio": "paid invoices paid more than risk.late_days days after their due date "
    "/ paid invoices (0-1; empty when nothing was paid yet)",
    "risk": "probability (0-1) that the customer's next invoices are paid more than "
    "risk.late_days late, scored by the run before segmenting (docs/risk.md; empty: not scored)",
}
OPERATORS = ("gte", "gt", "lte", "lt", "eq", "ne")
STEPS = ("operator_queue", "account_manager", "suspension", "agency", "write_off")
StepName = Literal["operator_queue", "account_manager", "suspension", "agency", "write_off"]

PACING_DEFAULTS: dict[str, int] = {"firm": 7, "final": 10}
"""Business days at least between the previous stage and a stage of this name, by default."""
ENTRY_DEFAULTS: dict[str, int] = {"firm": 30}
"""Days overdue from which a first contact enters at a stage of this name, by default."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(_Strict):
    """One rung of a ladder: sent `offset_days` after the due date (negative: before)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    offset_days: OffsetDays
    template: str = Field(pattern=r"^[a-z0-9_]+$")
    variants: list[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]] = Field(
        default_factory=list, description="other templates tried against `template` (see docs)"
    )
    holdout: Annotated[float, Field(strict=True, ge=0, lt=1)] = 0.0
    experiment: str | None = Field(
        default=None, pattern=r"^[a-z0-9_.:-]+$", description="default: <ladder>.<stage>"
    )
    min_business_days: Days | None = Field(
        default=None,
        description="business days at least since the previous stage (default: "
        "PACING_DEFAULTS by stage name, else none beyond the ladder's min_gap_days)",
    )
    entry: Days | None = Field(
        default=None,
        description="a case's first message starts at this stage when its oldest invoice is "
        "at least this many days overdue (default: ENTRY_DEFAULTS by stage name)",
    )

    @property
    def business_gap(self) -> int:
        """Business days at least since the previous stage, the default filled in."""
        if self.min_business_days is not None:
            return self.min_business_days
        return PACING_DEFAULTS.get(self.name, 0)

    @property
    def entry_days(self) -> int | None:
        """Days overdue from which a first contact enters here, the default filled in."""
        return self.entry if self.entry is not None else ENTRY_DEFAULTS.get(self.name)

    @model_validator(mode="after")
    def _distinct_arms(self) -> Stage:
        arms = [self.template, *self.variants]
        if len(arms) != len(set(arms)):
            raise ValueError("variants must differ from each other and from `template`")
        return self


class Escalation(_Strict):
    """What happens when the last stage is `grace_days` old and money is still owed."""

    grace_days: Days = 7
    steps: list[StepName] = ["operator_queue"]
    after_days: dict[StepName, Days] = Field(
        default_factory=dict, description="days after escalation before a step runs (default 0)"
    )
    min_business_days: Days = Field(
        default=7, description="business days at least between the last stage and escalation"
    )

    @model_validator(mode="after")
    def _delays_name_steps(self) -> Escalation:
        unknown = set(self.after_days) - set(self.steps)
        if unknown:
            raise ValueError(f"after_days names steps not in steps: {', '.join(sorted(unknown))}")
        return self


class Ladder(_Strict):
    """Stages in order, at least `min_gap_days` apart even when catching up. With
    `business_days`, stage offsets count business days in the customer's country."""

    min_gap_days: PositiveDays = 3
    business_days: bool = False
    stages: Annotated[list[Stage], Field(min_length=1)]
    escalation: Escalation = Escalation()

    @model_validator(mode="after")
    def _ordered(self) -> Ladder:
        offsets = [stage.offset_days for stage in self.stages]
        if offsets != sorted(set(offsets)):
            raise ValueError("stage offsets must be strictly increasing")
        names = [stage.name for stage in self.stages]
        if len(names) != len(set(names)):
            raise ValueError("stage names must be unique within a ladder")
        return self

    @property
    def needs_calendar(self) -> bool:
        """Whether the ladder counts business days anywhere: its offsets, or a gap between
        stages or before escalation (pacing, on by default)."""
        return (
            self.business_days
            or self.escalation.min_business_days > 0
            or any(stage.business_gap for stage in self.stages)
        )


class Segment(_Strict):
    """A named rule over behaviour features; the first segment whose rule matches wins."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    when: dict[str, Any] = Field(default_factory=dict)
    ladder: str

    @field_validator("when")
    @classmethod
    def _valid_condition(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_condition(value, "when")
        return value


class FeatureWindow(_Strict):
    """How far back behaviour is measured."""

    window_days: PositiveDays = 365
    failed_payment_days: PositiveDays = 30


DEFAULT_SENDER_NAMES = {
    "en": "Accounts Receivable",
    "fr": "Service comptabilité clients",
    "de": "Debitorenbuchhaltung",
}
"""The signature when a policy names nobody, in each language the templates speak."""


class Sender(_Strict):
    """The named person who signs reminders (named reminders get paid more often)."""

    name: str = DEFAULT_SENDER_NAMES["en"]
    names: dict[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")], str] = Field(
        default_factory=dict,
        description="the name in other languages, by language code (default: `name`)",
    )
    title: str = ""
    titles: dict[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")], str] = Field(
        default_factory=dict,
        description="the title in other languages, by language code (default: `title`)",
    )
    company: str = "Example Ltd"
    payment_url: str = "https://pay.example.com/{invoice_id}"

    @field_validator("payment_url")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        return check_url_template(value)

    def name_in(self, language: str) -> str:
        """The signature's name in `language`: `names`, else `name` as given, else the
        default name in that language (a person's name is never translated)."""
        if language in self.names:
            return self.names[language]
        if "name" in self.model_fields_set:
            return self.name
        return DEFAULT_SENDER_NAMES.get(language, self.name)


class Policy(_Strict):
    """The whole policy file."""

    version: Literal[1] = 1
    features: FeatureWindow = FeatureWindow()
    segments: Annotated[list[Segment], Field(min_length=1)]
    ladders: dict[str, Ladder]
    attribution_window_days: PositiveDays = 14
    sender: Sender = Sender()
    diagnosis: Diagnosis = Diagnosis()
    pauses: Pauses = Pauses()
    outage: Outage = Outage()
    contact: Contact = Contact()
    measurement: Measurement = Measurement()
    feedback: Feedback = Feedback()
    gateways: list[Gateway] = Field(
        default_factory=list,
        description="where customers pay, in order of preference (default: one gateway, "
        "`sender.payment_url`)",
    )
    replies: Replies = Replies()
    risk: Risk = Risk()

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        self._check_gateways()
        names = [segment.name for segment in self.segments]
        if len(names) != len(set(names)):
            raise ValueError("segment names must be unique")
        for index, segment in enumerate(self.segments):
            if segment.ladder not in self.ladders:
                raise ValueError(
                    f"segments.{index}.ladder: {segment.ladder!r} is not one of the ladders "
                    f"({', '.join(sorted(self.ladders))})"
                )
        if self.segments[-1].when:
            raise ValueError(
                "the last segment must have an empty `when` (a catch-all), so every customer "
                "lands in a segment"
            )
        return self

    def _check_gateways(self) -> None:
        names = [gateway.name for gateway in self.gateways]
        if len(names) != len(set(names)):
            raise ValueError("gateways: each gateway's name must be unique")
        if self.gateways and "payment_url" in self.sender.model_fields_set:
            raise ValueError(
                "sender.payment_url and gateways are both set: a policy with gateways lists "
                "every pay link there (move sender.payment_url into gateways)"
            )

    def payment_gateways(self) -> list[Gateway]:
        """The gateways in order of preference: `gateways`, else `sender.payment_url` alone."""
        return list(self.gateways) or [default_gateway(self.sender.payment_url)]

    def segment(self, name: str) -> Segment:
        return next(segment for segment in self.segments if segment.name == name)

    def templates(self) -> set[str]:
        """Every template a ladder or a diagnosed cause names (checked at startup)."""
        ladders = {
            template
            for ladder in self.ladders.values()
            for stage in ladder.stages
            for template in (stage.template, *stage.variants)
        }
        return ladders | set(self.diagnosis.templates.model_dump().values())


def check_condition(condition: Any, path: str) -> None:
    """Raise ValueError naming `path` if `condition` is not a valid structured condition."""
    if not isinstance(condition, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(condition).__name__}")
    for key, value in condition.items():
        here = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{here}: expected a non-empty list of conditions")
            for index, item in enumerate(value):
                check_condition(item, f"{here}[{index}]")
        elif key == "not":
            check_condition(value, here)
        elif key in FEATURES:
            if not isinstance(value, dict) or not value:
                raise ValueError(f"{here}: expected operators such as {{gte: 0.9}}")
            for op, operand in value.items():
                if op not in OPERATORS:
                    raise ValueError(f"{here}.{op}: unknown operator (use {', '.join(OPERATORS)})")
                if isinstance(operand, bool) or not isinstance(operand, int | float):
                    raise ValueError(f"{here}.{op}: expected a number, got {operand!r}")
        else:
            raise ValueError(
                f"{here}: unknown feature or combinator (features: {', '.join(FEATURES)}; "
                "combinators: all, any, not)"
            )


def condition_sql(condition: dict[str, Any], features: Table) -> ColumnElement[bool]:
    """Compile a validated condition to a SQL boolean over the features table."""
    clauses: list[ColumnElement[bool]] = []
    for key, value in condition.items():
        if key == "all":
            clauses.append(and_(*(condition_sql(item, features) for item in value)))
        elif key == "any":
            clauses.append(or_(*(condition_sql(item, features) for item in value)))
        elif key == "not":
            clauses.append(not_(condition_sql(value, features)))
        else:
            column = features.c[key]
            clauses.extend(_compare(column, op, operand) for op, operand in value.items())
    return and_(true(), *clauses)


def _compare(column: Any, op: str, operand: float) -> ColumnElement[bool]:
    if column.key in ("open_balance", "overdue_balance"):
        operand = _money_operand(operand)
    return {
        "gte": column >= operand,
        "gt": column > operand,
        "lte": column <= operand,
        "lt": column < operand,
        "eq": column == operand,
        "ne": column != operand,
    }[op]


def _money_operand(operand: float) -> Decimal:
    return Decimal(str(operand))


def condition_matches(condition: dict[str, Any], values: dict[str, Any]) -> bool:
    """Evaluate a condition in Python (for explaining one customer) exactly as SQL would.

    SQL's three-valued logic decides, not Python's: an empty feature makes its comparison
    UNKNOWN, `not` of UNKNOWN stays UNKNOWN, and a CASE WHEN only matches on TRUE. Without that,
    `{not: {on_time_ratio: {gte: 0.9}}}` would match a customer with no paid invoice here but
    not in the segment query, and the explanation would contradict the stored segment.
    """
    return _truth(condition, values) is True


def _truth(condition: dict[str, Any], values: dict[str, Any]) -> bool | None:
    """TRUE, FALSE or UNKNOWN (None) for a condition: its keys are ANDed, like condition_sql."""
    results: list[bool | None] = []
    for key, value in condition.items():
        if key == "all":
            results.append(_and([_truth(item, values) for item in value]))
        elif key == "any":
            results.append(_or([_truth(item, values) for item in value]))
        elif key == "not":
            inner = _truth(value, values)
            results.append(None if inner is None else not inner)
        elif key in FEATURES:
            results.append(_python_compare(values.get(key), value))
    return _and(results)


def _and(results: list[bool | None]) -> bool | None:
    if any(result is False for result in results):
        return False
    return None if any(result is None for result in results) else True


def _or(results: list[bool | None]) -> bool | None:
    if any(result is True for result in results):
        return True
    return None if any(result is None for result in results) else False


def _python_compare(actual: Any, ops: dict[str, float]) -> bool | None:
    if actual is None:
        return None
    checks = {
        "gte": lambda a, b: a >= b,
        "gt": lambda a, b: a > b,
        "lte": lambda a, b: a <= b,
        "lt": lambda a, b: a < b,
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
    }
    return all(checks[op](float(actual), float(operand)) for op, operand in ops.items())


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file; PolicyError names the file and the bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PolicyError(f"{path}: policy file not found") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"{path}:{_line_of(path, exc.start)}: not UTF-8; save it as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            problems.append(f"{path}: {where}: {error['msg']}")
        raise PolicyError("invalid policy:\n" + "\n".join(problems)) from exc


def _line_of(path: Path, offset: int) -> int:
    """The line of a byte offset in a file."""
    return path.read_bytes()[:offset].count(b"\n") + 1
