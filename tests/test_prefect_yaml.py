"""prefect.yaml is read by `prefect deploy`, which silently ignores misspelled keys: check it."""

from __future__ import annotations

import inspect

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from collectflow.flows.config import PROJECT_ROOT

DEPLOYMENT_KEYS = {
    "name", "description", "entrypoint", "parameters", "schedules", "concurrency_limit",
    "work_pool", "tags", "version", "enforce_parameter_schema",
}  # fmt: skip
SCHEDULE_KEYS = {"cron", "timezone", "slug", "active", "day_or", "parameters"}

DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_each_deployment_loads_and_its_parameters_exist(deployment: dict) -> None:
    assert set(deployment) <= DEPLOYMENT_KEYS, set(deployment) - DEPLOYMENT_KEYS
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment["entrypoint"]))
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment.get("parameters", {})) <= accepted
    # scheduled and bulk runs cancel a duplicate; operator actions queue (each one matters)
    strategy = "ENQUEUE" if "operator-action" in deployment.get("tags", []) else "CANCEL_NEW"
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": strategy}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_each_schedule_is_a_valid_cron_with_a_timezone_and_a_slug(deployment: dict) -> None:
    for schedule in deployment.get("schedules", []):
        assert set(schedule) <= SCHEDULE_KEYS, set(schedule) - SCHEDULE_KEYS
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        assert schedule["slug"]


def test_the_daily_run_is_scheduled() -> None:
    daily = next(d for d in DEPLOYMENTS if d["entrypoint"].endswith(":daily_collections"))
    assert daily["schedules"], "the daily run needs a schedule"


def test_delivery_has_its_own_hourly_deployment() -> None:
    deliver = next(d for d in DEPLOYMENTS if d["entrypoint"] == "flows/delivery.py:deliver")
    [schedule] = deliver["schedules"]
    minute, *every = schedule["cron"].split()
    assert minute.isdigit() and every == ["*"] * 4, "once an hour"
    assert deliver["concurrency_limit"]["limit"] == 1


@pytest.mark.parametrize(
    "deployment",
    [d for d in DEPLOYMENTS if "operator-action" in d.get("tags", [])],
    ids=lambda d: d["name"],
)
def test_each_operator_action_is_manual_and_its_form_describes_every_field(
    deployment: dict,
) -> None:
    from prefect.utilities.callables import parameter_schema

    assert not deployment.get("schedules")
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment["entrypoint"]))
    fields = parameter_schema(flow.fn).model_dump()["properties"]
    assert "operator" in fields
    assert all(field.get("description") for field in fields.values()), fields
