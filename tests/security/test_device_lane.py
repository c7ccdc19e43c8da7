"""Finding 1 of the outside review: a device enrolled with group A's token must not reach
group B's bundle or rollout by any label it sends. Played end to end through the real
device API with a real enrollment (keys, proof of possession) and a real rollout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from fleet.models import Device, Group, Rollout
from fleet.rollouts import engine as rollouts
from fleet.rollouts import gates
from fleet.security import director
from tests.fleet.device_helpers import FakeDevice
from tests.fleet.publish_helpers import make_version, onnx_files, publish_now
from tests.security.conftest import token_for

pytestmark = pytest.mark.django_db


def test_it_keeps_a_device_that_labels_itself_into_group_b_out_of_b(
    alice_api: Any, client: Client, group_b_rollout: Rollout
) -> None:
    group_a = Group.objects.create(name="a")
    attacker = FakeDevice(name="attacker")
    body = attacker.enroll_body(token_for(alice_api, group_a.pk), labels={"site": "b"})
    response = client.post("/api/device/v1/enroll", body, content_type="application/json")
    assert response.status_code == 201, response.content
    attacker.credential = response.json()["credential"]
    stored = Device.objects.get(pk=response.json()["device_id"])
    # What it asked for is kept (for operators to see) but decides nothing.
    assert stored.labels == {} and stored.reported_labels == {"site": "b"}
    group_b = group_b_rollout.group
    assert not group_b.matches(stored)
    assert stored.pk not in set(group_b.members().values_list("pk", flat=True))
    # The rollout moves on: the attacker gets no assignment, no wrapped key, no payload.
    gates.step(group_b_rollout)
    assert director.current_assignment(stored) is None
    payload = attacker.client().get(f"/api/device/v1/bundles/{group_b_rollout.bundle_id}/payload")
    assert payload.status_code in (403, 404)
    targets = attacker.client().get("/api/device/v1/metadata/director/targets.json")
    assert targets.status_code == 404


def test_it_lets_the_tokens_labels_win_over_what_the_device_sends(
    alice_api: Any, client: Client
) -> None:
    group = Group.objects.create(name="a", selector="site=a")
    device = FakeDevice()
    token = token_for(alice_api, group.pk, {"site": "a", "ring": "canary"})
    body = device.enroll_body(token, labels={"site": "b", "ring": "prod", "extra": "x"})
    response = client.post("/api/device/v1/enroll", body, content_type="application/json")
    assert response.status_code == 201, response.content
    stored = Device.objects.get(pk=response.json()["device_id"])
    assert stored.labels == {"site": "a", "ring": "canary"}
    shown = alice_api.get(f"/api/v1/devices/{stored.pk}").json()
    assert shown["labels"] == {"site": "a", "ring": "canary"}
    assert shown["reported_labels"] == {"site": "b", "ring": "prod", "extra": "x"}
    # An operator may adopt a reported label; then (and only then) selectors see it.
    other = Group.objects.create(name="extra", selector="extra=x")
    assert not other.matches(stored)
    relabel = alice_api.client.put(
        f"/api/v1/devices/{stored.pk}/labels",
        {"labels": {"site": "a", "extra": "x"}},
        content_type="application/json",
    )
    assert relabel.status_code == 200
    stored.refresh_from_db()
    assert other.matches(stored)


def test_it_gives_a_pending_device_nothing_until_an_operator_accepts_it(
    alice_api: Any, bob_api: Any, client: Client, tmp_path: Path, alice: Any
) -> None:
    made = alice_api.post(
        "/api/v1/groups", {"name": "gated", "selector": "", "require_approval": True}
    )
    assert made.status_code == 201 and made.json()["require_approval"] is True
    group = Group.objects.get(pk=made.json()["id"])
    bundle = publish_now(make_version(onnx_files(tmp_path), name="gated model"))
    rollout = rollouts.create(
        user=alice, bundle=bundle, group=group, waves=[100], gates={}, soak_seconds=0
    )
    device = FakeDevice()
    assert device.enroll(client, token_for(alice_api, group.pk)).status_code == 201
    stored = Device.objects.get(pk=device.device_id)
    assert stored.admission == "pending"
    pending = alice_api.get("/api/v1/devices?admission=pending").json()
    assert [d["id"] for d in pending["items"]] == [device.device_id]
    gates.step(rollout)
    assert director.current_assignment(stored) is None
    state = device.client().get("/api/device/v1/state").json()
    assert state["desired"]["bundle"] is None
    report = device.client().post(
        "/api/device/v1/events",
        {"events": [{"state": "frozen"}]},
        content_type="application/json",
    )
    assert report.status_code == 403
    # A viewer cannot decide; an operator accepts, and the rollout reaches the device.
    url = f"/api/v1/devices/{device.device_id}/admission"
    assert bob_api.post(f"{url}/accept").status_code == 403
    accepted = alice_api.post(f"{url}/accept")
    assert accepted.status_code == 200 and accepted.json()["admission"] == "accepted"
    assert alice_api.post(f"{url}/reject").status_code == 409  # decided already
    gates.step(rollout)
    stored.refresh_from_db()
    assert director.current_assignment(stored).bundle_id == bundle.pk
    actions = set(alice.auditevent_set.values_list("action", flat=True))
    assert "device.accept" in actions


def test_it_locks_out_a_rejected_device(alice_api: Any, client: Client) -> None:
    group = Group.objects.create(name="gated", require_approval=True)
    device = FakeDevice()
    assert device.enroll(client, token_for(alice_api, group.pk)).status_code == 201
    rejected = alice_api.post(f"/api/v1/devices/{device.device_id}/admission/reject")
    assert rejected.status_code == 200 and rejected.json()["status"] == "revoked"
    assert device.client().get("/api/device/v1/state").status_code == 401
