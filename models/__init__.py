"""Collectflow's tables and database engine. Imports nothing from `flows`."""

from models.db import drop_db, init_db, make_engine
from models.money import Money, MoneyPrecisionError
from models.sql import days_between, insert_ignoring_conflicts
from models.tables import (
    Case,
    CaseEvent,
    Customer,
    CustomerFeatures,
    Invoice,
    InvoiceBalance,
    LadderStage,
    Message,
    MessageItem,
    Outcome,
    Payment,
    PaymentAttribution,
    QueueItem,
    SegmentChange,
)

__all__ = [
    "Case",
    "CaseEvent",
    "Customer",
    "CustomerFeatures",
    "Invoice",
    "InvoiceBalance",
    "LadderStage",
    "Message",
    "MessageItem",
    "Money",
    "MoneyPrecisionError",
    "Outcome",
    "Payment",
    "PaymentAttribution",
    "QueueItem",
    "SegmentChange",
    "days_between",
    "drop_db",
    "init_db",
    "insert_ignoring_conflicts",
    "make_engine",
]
