"""Findings 3-5: a device reports only on bundles it was assigned (current or previous),
its telemetry batch ids are its own, and free text it sends is capped where stored."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import Client

from fleet.models import Device, DeviceEvent, Group, Rollout, TelemetryBatch
from fleet.rollouts import gates
from tests.fleet.device_helpers import FakeDevice
from tests.fleet.telemetry_helpers import grant
from tests.security.conftest import token_for

pytestmark = pytest.mark.django_db


def _enrolled(api: Any, client: Client, name: str = "pi") -> tuple[FakeDevice, Device]:
    group = Group.objects.get_or_create(name="a")[0]
    device = FakeDevice(name=name)
    assert device.enroll(client, token_for(api, group.pk)).status_code == 201
    return device, Device.objects.get(pk=device.device_id)


def _events(device: FakeDevice, *events: dict[str, Any]) -> Any:
    return device.client().post(
        "/api/device/v1/events", {"events": list(events)}, content_type="application/json"
    )


def _telemetry(device: FakeDevice, batch: dict[str, Any]) -> Any:
    return device.client().post(
        "/api/device/v1/telemetry", json.dumps(batch), content_type="application/json"
    )


def test_it_refuses_a_forged_failure_for_another_groups_rollout(
    alice_api: Any, client: Client, group_b_rollout: Rollout
) -> None:
    attacker, _ = _enrolled(alice_api, client, "attacker")
    bundle = group_b_rollout.bundle_id
    forged = _events(attacker, {"state": "failed", "bundle": bundle, "reason": "forged"})
    assert forged.status_code == 400 and "never assigned" in forged.json()["error"]
    gates.step(group_b_rollout)
    group_b_rollout.refresh_from_db()
    assert group_b_rollout.status != "rolled_back"
    assert not DeviceEvent.objects.filter(bundle=bundle).exists()


def test_it_refuses_reports_on_bundles_never_assigned_and_changes_nothing(
    alice_api: Any, client: Client
) -> None:
    device, stored = _enrolled(alice_api, client)
    grant(stored, "b-mine")
    mixed = _events(
        device, {"state": "active", "bundle": "b-mine"}, {"state": "active", "bundle": "b-not"}
    )
    assert mixed.status_code == 400
    stored.refresh_from_db()
    assert not DeviceEvent.objects.exists() and "active_bundle" not in stored.state
    batch = {
        "batch_id": str(uuid.uuid4()),
        "bundle": "b-mine",
        "bundles": [{"bundle": "b-mine", "requests": 1}, {"bundle": "b-not", "requests": 1}],
    }
    assert _telemetry(device, batch).status_code == 400
    assert _telemetry(device, {**batch, "bundle": "b-not", "bundles": []}).status_code == 400
    assert not TelemetryBatch.objects.exists()


def test_it_accepts_reports_on_the_current_and_previous_bundles(
    alice_api: Any, client: Client
) -> None:
    device, stored = _enrolled(alice_api, client)
    grant(stored, "b-old", "b-new")
    events = _events(
        device,
        {"state": "active", "bundle": "b-new"},
        {"state": "rolled-back", "bundle": "b-old", "reason": "local rollback"},
    )
    assert events.status_code == 202
    batch = {"batch_id": str(uuid.uuid4()), "bundles": [{"bundle": "b-old", "requests": 2}]}
    assert _telemetry(device, batch).status_code == 202


def test_it_keeps_batch_ids_per_device(alice_api: Any, client: Client) -> None:
    first, _ = _enrolled(alice_api, client, "first")
    second, _ = _enrolled(alice_api, client, "second")
    batch = {"batch_id": str(uuid.uuid4()), "requests": 3}
    assert _telemetry(first, batch).status_code == 202
    # The same id from another device is that device's own batch, not a duplicate.
    assert _telemetry(second, batch).status_code == 202
    assert _telemetry(second, batch).json() == {"duplicate": True}
    assert TelemetryBatch.objects.count() == 2


def test_it_caps_an_events_reason_where_it_is_stored(alice_api: Any, client: Client) -> None:
    device, stored = _enrolled(alice_api, client)
    grant(stored, "b-1")
    huge = "x" * 200_000
    answer = _events(device, {"state": "failed", "bundle": "b-1", "reason": huge})
    assert answer.status_code == 202
    stored.refresh_from_db()
    assert len(stored.state["last_error"]["reason"]) == 500
    assert len(stored.state["update"]["reason"]) == 500
    assert len(DeviceEvent.objects.get().reason) == 500
    listed = alice_api.get("/api/v1/devices")
    assert len(listed.content) < 10_000


def test_it_takes_naive_and_aware_period_times_together(alice_api: Any, client: Client) -> None:
    device, _ = _enrolled(alice_api, client)
    batch = {
        "batch_id": str(uuid.uuid4()),
        "period": {"start": "2026-11-22T01:00:00", "end": "2026-11-22T01:05:00+00:00"},
    }
    answer = _telemetry(device, batch)
    assert answer.status_code == 202, answer.content
    backwards = {
        "batch_id": str(uuid.uuid4()),
        "period": {"start": "2026-11-22T02:00:00+01:00", "end": "2026-11-22T00:30:00"},
    }
    assert _telemetry(device, backwards).status_code == 400
