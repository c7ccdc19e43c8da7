"""Enrollment with a one-time token and proof of possession; groups; device listing,
relabelling and revocation (which takes effect on the next request)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import Client

from fleet.models import Device, DeviceEvent, EnrollmentToken, Group, TelemetryBatch
from tests.fleet.device_helpers import FakeDevice
from tests.fleet.telemetry_helpers import grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def group(alice_api: Any) -> dict[str, Any]:
    response = alice_api.post("/api/v1/groups", {"name": "plant-3", "selector": "site=plant-3"})
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def token(alice_api: Any, group: dict[str, Any]) -> str:
    response = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"], "max_uses": 2})
    assert response.status_code == 201, response.content
    assert "tinyfleet-agent enroll --server" in response.json()["command"]
    raw: str = response.json()["token"]
    return raw


def test_a_device_enrolls_with_its_own_keys(
    client: Client, token: str, group: dict[str, Any]
) -> None:
    device = FakeDevice()
    response = device.enroll(client, token)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["credential"].startswith("tfd_")
    assert body["image_root"]["signed"]["_type"] == "root"
    assert body["director_root"]["signed"]["_type"] == "root"
    stored = Device.objects.get(pk=body["device_id"])
    assert stored.identity_public_key == device.identity_hex
    assert body["credential"] not in json.dumps(list(Device.objects.values()), default=str)
    assert stored.groups.filter(pk=group["id"]).exists()
    assert EnrollmentToken.objects.get().uses == 1


def test_enrollment_refuses_a_bad_proof(client: Client, token: str) -> None:
    device, other = FakeDevice(), FakeDevice()
    body = device.enroll_body(token, proof=other.enroll_body(token)["proof"])
    response = client.post("/api/device/v1/enroll", body, content_type="application/json")
    assert response.status_code == 400
    assert "proof of possession" in response.json()["error"]
    assert not Device.objects.exists()


@pytest.mark.parametrize("problem", ["unknown", "used-up", "expired", "revoked"])
def test_enrollment_refuses_an_unusable_token(client: Client, token: str, problem: str) -> None:
    from datetime import timedelta

    from django.utils import timezone

    record = EnrollmentToken.objects.get()
    if problem == "used-up":
        record.uses = 2
    elif problem == "expired":
        record.expires_at = timezone.now() - timedelta(seconds=1)
    elif problem == "revoked":
        record.revoked_at = timezone.now()
    record.save()
    raw = "tfe_nope" if problem == "unknown" else token
    response = FakeDevice().enroll(client, raw)
    assert response.status_code == 401
    assert not Device.objects.exists()


def test_the_same_identity_cannot_enroll_twice(client: Client, token: str) -> None:
    device = FakeDevice()
    assert device.enroll(client, token).status_code == 201
    again = client.post(
        "/api/device/v1/enroll", device.enroll_body(token), content_type="application/json"
    )
    assert again.status_code == 409
    assert Device.objects.count() == 1


def test_enrollment_refuses_malformed_keys_and_labels(client: Client, token: str) -> None:
    device = FakeDevice()
    for override in (
        {"encryption_public_key": "zz"},
        {"labels": {"Bad Key": "x"}},
        {"identity_public_key": "00" * 31},
    ):
        response = client.post(
            "/api/device/v1/enroll",
            device.enroll_body(token, **override),
            content_type="application/json",
        )
        assert response.status_code == 400, override
    assert not Device.objects.exists()


def test_groups_select_devices_by_label(alice_api: Any, client: Client, token: str) -> None:
    device = FakeDevice()
    device.enroll(client, token)
    Device.objects.update(labels={"site": "plant-3", "arch": "aarch64"})
    arm = alice_api.post("/api/v1/groups", {"name": "arm", "selector": "arch=aarch64"}).json()
    x86 = alice_api.post("/api/v1/groups", {"name": "x86", "selector": "arch=x86_64"}).json()
    assert alice_api.get(f"/api/v1/devices?group={arm['id']}").json()["count"] == 1
    assert alice_api.get(f"/api/v1/devices?group={x86['id']}").json()["count"] == 0
    assert alice_api.get("/api/v1/devices?label=site=plant-3").json()["count"] == 1


def test_group_selectors_are_validated(alice_api: Any) -> None:
    response = alice_api.post("/api/v1/groups", {"name": "bad", "selector": "site plant"})
    assert response.status_code == 400
    assert "key=value" in response.json()["error"]
    assert alice_api.post("/api/v1/groups", {"name": "ok"}).status_code == 201
    assert alice_api.post("/api/v1/groups", {"name": "ok"}).status_code == 409
    assert not Group.objects.filter(name="bad").exists()


def test_a_viewer_cannot_create_groups_or_tokens(bob_api: Any, group: dict[str, Any]) -> None:
    assert bob_api.post("/api/v1/groups", {"name": "x"}).status_code == 403
    assert bob_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).status_code == 403


def test_revoking_a_device_locks_it_out_at_once(alice_api: Any, client: Client, token: str) -> None:
    device = FakeDevice()
    device.enroll(client, token)
    grant(Device.objects.get(pk=device.device_id), "b-1", "b-2")
    events = {"events": [{"state": "downloading", "bundle": "b-1"}]}
    assert (
        device.client()
        .post("/api/device/v1/events", events, content_type="application/json")
        .status_code
        == 202
    )
    revoked = alice_api.post(f"/api/v1/devices/{device.device_id}/revoke")
    assert revoked.json()["status"] == "revoked"
    response = device.client().post(
        "/api/device/v1/events", events, content_type="application/json"
    )
    assert response.status_code == 401


def test_relabelling_validates_labels(alice_api: Any, client: Client, token: str) -> None:
    device = FakeDevice()
    device.enroll(client, token)
    ok = alice_api.client.put(
        f"/api/v1/devices/{device.device_id}/labels",
        {"labels": {"site": "plant-9"}},
        content_type="application/json",
    )
    assert ok.status_code == 200 and ok.json()["labels"] == {"site": "plant-9"}
    bad = alice_api.client.put(
        f"/api/v1/devices/{device.device_id}/labels",
        {"labels": {"site": "has space"}},
        content_type="application/json",
    )
    assert bad.status_code == 400
    assert Device.objects.get().labels == {"site": "plant-9"}


def test_events_update_the_devices_state(client: Client, token: str, alice_api: Any) -> None:
    device = FakeDevice()
    device.enroll(client, token)
    grant(Device.objects.get(pk=device.device_id), "b-1", "b-2")
    device.client().post(
        "/api/device/v1/events",
        {
            "events": [
                {"state": "active", "bundle": "b-1"},
                {
                    "state": "failed",
                    "bundle": "b-2",
                    "reason": "golden self-test failed: agreement 0.12",
                },
            ]
        },
        content_type="application/json",
    )
    state = alice_api.get(f"/api/v1/devices/{device.device_id}").json()["state"]
    assert state["active_bundle"] == "b-1"
    assert "golden" in state["last_error"]["reason"]
    bad = device.client().post(
        "/api/device/v1/events",
        {"events": [{"state": "exploded"}]},
        content_type="application/json",
    )
    assert bad.status_code == 400
    assert DeviceEvent.objects.count() == 2


def test_telemetry_is_validated_and_deduplicated(client: Client, token: str) -> None:
    device = FakeDevice()
    device.enroll(client, token)
    grant(Device.objects.get(pk=device.device_id), "b-1", "b-2")
    batch = {
        "batch_id": str(uuid.uuid4()),
        "bundle": "b-1",
        "period": {"start": "2026-11-22T01:00:00+00:00", "end": "2026-11-22T01:05:00+00:00"},
        "requests": 10,
        "latency_ms": {"counts": [0, 3, 7]},
    }
    post = device.client().post
    assert (
        post("/api/device/v1/telemetry", batch, content_type="application/json").status_code == 202
    )
    replay = post("/api/device/v1/telemetry", batch, content_type="application/json")
    assert replay.status_code == 200 and replay.json() == {"duplicate": True}
    for bad in (
        {"batch_id": "nope"},
        {**batch, "batch_id": str(uuid.uuid4()), "x": "y" * 500},
        {**batch, "batch_id": str(uuid.uuid4()), "period": {"start": "yesterday"}},
    ):
        assert (
            post("/api/device/v1/telemetry", bad, content_type="application/json").status_code
            == 400
        )
    garbage = post("/api/device/v1/telemetry", b"\x00\xff", content_type="application/json")
    assert garbage.status_code == 400
    huge = post(
        "/api/device/v1/telemetry",
        {"batch_id": str(uuid.uuid4()), "pad": [1] * 40000},
        content_type="application/json",
    )
    assert huge.status_code == 413
    assert TelemetryBatch.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_same_batch_racing_itself_is_stored_once(client: Client, token: str) -> None:
    import threading

    from django.db import connection

    device = FakeDevice()
    device.enroll(client, token)
    batch = {"batch_id": str(uuid.uuid4()), "requests": 1}
    statuses: list[int] = []

    def send() -> None:
        statuses.append(
            device.client()
            .post("/api/device/v1/telemetry", batch, content_type="application/json")
            .status_code
        )
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses)[0] in (200, 202) and set(statuses) <= {200, 202}
    assert TelemetryBatch.objects.count() == 1


def test_local_rollbacks_and_failed_periodic_selftests_update_the_devices_state(
    client: Client, token: str, alice_api: Any
) -> None:
    device = FakeDevice()
    device.enroll(client, token)
    grant(Device.objects.get(pk=device.device_id), "b-1", "b-2")
    events = [
        {"state": "active", "bundle": "b-1"},
        {"state": "active", "bundle": "b-2"},
        {"state": "selftest-failed", "bundle": "b-2", "reason": "below-tolerance: 1/3"},
        {"state": "rolled-back", "bundle": "b-1", "reason": "local rollback"},
    ]
    answer = device.client().post(
        "/api/device/v1/events", {"events": events}, content_type="application/json"
    )
    assert answer.status_code == 202, answer.content
    state = alice_api.get(f"/api/v1/devices/{device.device_id}").json()["state"]
    assert state["active_bundle"] == "b-1" and state["previous_bundle"] == "b-2"
    assert state["last_error"]["reason"] == "below-tolerance: 1/3"
    assert state["update"]["reason"] == "local rollback"
