"""The per-group low-confidence fallback: operator API and page, validation, audit, and
delivery inside the ETag'd desired state (view and fast path agree). Real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from accounts.models import AuditEvent
from fleet.models import Device, Group
from tests.fleet.publish_helpers import TestDevice, make_device

STATE = "/api/device/v1/state"
URL = "https://models.example.com/v1/classify"


@pytest.fixture
def plant(db: None) -> tuple[Group, TestDevice]:
    group = Group.objects.create(name="plant-3", selector="site=plant-3")
    device = make_device("pi-1")
    return group, device


def _put(api: Any, path: str, body: dict[str, Any]) -> Any:
    return api.client.put(path, json.dumps(body), content_type="application/json")


def _relabel(api: Any, device: TestDevice, labels: dict[str, str]) -> None:
    assert _put(api, f"/api/v1/devices/{device.id}/labels", {"labels": labels}).status_code == 200


def test_it_delivers_the_group_fallback_in_the_etagged_desired_state(
    plant: tuple[Group, TestDevice], alice_api: Any, django_assert_num_queries: Any
) -> None:
    group, device = plant
    _relabel(alice_api, device, {"site": "plant-3"})  # the selector now matches it
    client = device.client()
    first = client.get(STATE)
    assert first.status_code == 200 and "fallback" not in first.json()  # off by default

    answer = _put(alice_api, f"/api/v1/groups/{group.pk}/fallback", {"enabled": True, "url": URL})
    assert answer.status_code == 200, answer.content
    assert answer.json()["fallback_enabled"] is True and answer.json()["fallback_url"] == URL
    changed = client.get(STATE, HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200 and changed.json()["fallback"] == {"url": URL}
    with django_assert_num_queries(1):  # the fast path computes the same ETag
        assert client.get(STATE, HTTP_IF_NONE_MATCH=changed["ETag"]).status_code == 304
    [event] = AuditEvent.objects.filter(action="group.fallback")
    assert event.actor == alice_api.user and event.detail["url"] == URL
    assert event.detail["before"] == {"enabled": False, "url": ""}

    # Leaving the group (labels no longer match) or turning it off removes it again.
    _relabel(alice_api, device, {"site": "plant-4"})
    assert "fallback" not in client.get(STATE).json()
    _relabel(alice_api, device, {"site": "plant-3"})
    assert client.get(STATE).json()["fallback"] == {"url": URL}
    off = _put(alice_api, f"/api/v1/groups/{group.pk}/fallback", {"enabled": False})
    assert off.status_code == 200 and off.json()["fallback_enabled"] is False
    assert client.get(STATE).json() == first.json()
    assert client.get(STATE)["ETag"] == first["ETag"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"enabled": True, "url": "http://models.example.com/x"}, "https"),
        ({"enabled": True, "url": "http://10.1.2.3/x"}, "https"),
        ({"enabled": True, "url": ""}, "characters"),
        ({"enabled": True, "url": "https://u:p@models.example.com/"}, "user:password"),
        ({"enabled": True, "url": "javascript:alert(1)"}, "host"),
    ],
)
def test_it_refuses_fallback_urls_that_would_expose_inputs_and_changes_nothing(
    plant: tuple[Group, TestDevice], alice_api: Any, body: dict[str, Any], message: str
) -> None:
    group, device = plant
    device.device.groups.add(group)
    answer = _put(alice_api, f"/api/v1/groups/{group.pk}/fallback", body)
    assert answer.status_code == 400 and message in answer.json()["error"]
    group.refresh_from_db()
    assert (group.fallback_enabled, group.fallback_url) == (False, "")
    assert Device.objects.get(pk=device.device.pk).fallback_url == ""
    assert not AuditEvent.objects.filter(action="group.fallback").exists()


def test_it_lets_only_operators_change_the_fallback(
    plant: tuple[Group, TestDevice], bob_api: Any, alice_api: Any
) -> None:
    group, _ = plant
    path = f"/api/v1/groups/{group.pk}/fallback"
    assert _put(bob_api, path, {"enabled": True, "url": URL}).status_code == 403
    assert _put(alice_api, "/api/v1/groups/999999/fallback", {"enabled": False}).status_code == 404
    group.refresh_from_db()
    assert group.fallback_enabled is False
    listed = alice_api.get("/api/v1/groups").json()["items"]
    assert listed[0]["fallback_enabled"] is False and listed[0]["fallback_url"] == ""


def test_it_sets_the_fallback_from_the_groups_page(
    plant: tuple[Group, TestDevice], alice: Any, bob: Any
) -> None:
    group, device = plant
    device.device.groups.add(group)
    form = {"action": "fallback", "group": group.pk, "enabled": "on", "url": URL}
    viewer = Client()
    viewer.force_login(bob)
    assert viewer.post("/groups/", form).status_code == 403
    operator = Client()
    operator.force_login(alice)
    page = operator.post("/groups/", form, follow=True)
    assert page.status_code == 200 and b"fallback for plant-3 is on" in page.content
    assert URL.encode() in page.content
    assert device.client().get(STATE).json()["fallback"] == {"url": URL}
    bad = operator.post("/groups/", {**form, "url": "http://example.com/"}, follow=True)
    assert b"not changed" in bad.content
    group.refresh_from_db()
    assert group.fallback_url == URL


def test_a_device_enrolling_into_a_group_with_the_fallback_gets_it(
    alice_api: Any, client: Client
) -> None:
    from tests.fleet.device_helpers import FakeDevice

    group = alice_api.post("/api/v1/groups", {"name": "kiosks"}).json()
    _put(alice_api, f"/api/v1/groups/{group['id']}/fallback", {"enabled": True, "url": URL})
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    device = FakeDevice()
    device.enroll(client, token)
    assert device.client().get(STATE).json()["fallback"] == {"url": URL}
