"""The payment gateways of the policy (key `gateways`): where a customer can pay, in order.

When the outage detector holds a gateway's window open (flows/steps/outage.py), messages offer
the next gateway of the list instead, so paying works even while one payment system does not.
A policy without the list keeps the one `sender.payment_url` as its single gateway.
"""

from __future__ import annotations

from string import Formatter

from pydantic import BaseModel, ConfigDict, Field, field_validator

URL_PLACEHOLDERS = {"invoice_id"}
DEFAULT_GATEWAY = "default"
"""The name of the single gateway a policy without `gateways` has (its `sender.payment_url`)."""


def check_url_template(value: str) -> str:
    """`value` if its placeholders are known (`{invoice_id}`), else a ValueError saying why."""
    try:
        fields = {name for _, name, _, _ in Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    unknown = fields - URL_PLACEHOLDERS
    if unknown:
        names = ", ".join(f"{{{name}}}" for name in sorted(unknown))
        raise ValueError(f"unknown placeholder {names} (the only one is {{invoice_id}})")
    return value


class Gateway(BaseModel):
    """One way to pay: its `name` as payments.csv's `gateway` column spells it (the outage
    detector tracks gateways by that name), the customers' `label` for it, and its pay link
    template (`{invoice_id}` is replaced by the URL-quoted invoice id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    url: str = Field(description="https URL template with {invoice_id}")
    label: str = Field(default="", description="the name customers see (default: `name`)")

    @field_validator("url")
    @classmethod
    def _https_template(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r}: a pay link must start with https://")
        return check_url_template(value)

    @property
    def shown_as(self) -> str:
        """What customers read: the label, else the name; nothing for the default gateway of a
        policy without `gateways` (its name is ours, not a payment system's)."""
        if self.name == DEFAULT_GATEWAY and not self.label:
            return ""
        return self.label or self.name


def default_gateway(payment_url: str) -> Gateway:
    """The single gateway of a policy without `gateways`: `sender.payment_url`, which was
    validated by its own rules (an older policy's http:// URL stays valid)."""
    return Gateway.model_construct(name=DEFAULT_GATEWAY, url=payment_url, label="")
