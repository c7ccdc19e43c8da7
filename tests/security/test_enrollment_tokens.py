"""Finding 2: enrollment tokens are single-use by default, always expire (the API refuses
never-expiring ones), can be revoked (API and page), are listed with uses and expiry, and
every issue and revocation is in the audit log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent
from fleet.models import Device, EnrollmentToken, Group
from tests.fleet.device_helpers import FakeDevice

pytestmark = pytest.mark.django_db


@pytest.fixture
def group(db: None) -> Group:
    return Group.objects.create(name="plant-3")


def _issue(api: Any, **body: Any) -> Any:
    return api.post("/api/v1/enrollment-tokens", body)


def test_it_makes_tokens_single_use_by_default(
    alice_api: Any, client: Client, group: Group
) -> None:
    token = _issue(alice_api, group=group.pk).json()["token"]
    assert FakeDevice(name="first").enroll(client, token).status_code == 201
    second = FakeDevice(name="second").enroll(client, token)
    assert second.status_code == 401 and "used up" in second.json()["error"]
    assert Device.objects.count() == 1
    many = _issue(alice_api, group=group.pk, max_uses=2).json()["token"]
    assert FakeDevice(name="a").enroll(client, many).status_code == 201
    assert FakeDevice(name="b").enroll(client, many).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in_hours": None},
        {"expires_in_hours": 0},
        {"expires_in_hours": 24 * 365},
        {"max_uses": 0},
        {"max_uses": None},
        {"group": 2**40},
    ],
)
def test_it_refuses_never_expiring_overlong_or_unlimited_tokens(
    alice_api: Any, group: Group, body: dict[str, Any]
) -> None:
    response = _issue(alice_api, **{"group": group.pk, **body})
    assert response.status_code == 400, response.content
    assert "error" in response.json()
    assert not EnrollmentToken.objects.exists()


def test_it_caps_the_lifetime_of_tokens_made_before_lifetimes_existed(
    client: Client, group: Group, settings: Any
) -> None:
    record, raw = EnrollmentToken.issue(group)
    old = timezone.now() - timedelta(hours=settings.ENROLLMENT_TOKEN_MAX_HOURS + 1)
    EnrollmentToken.objects.filter(pk=record.pk).update(expires_at=None, created_at=old)
    response = FakeDevice().enroll(client, raw)
    assert response.status_code == 401 and "expired" in response.json()["error"]


def test_it_revokes_tokens_through_the_api_and_audits_it(
    alice_api: Any, bob_api: Any, client: Client, group: Group
) -> None:
    made = _issue(alice_api, group=group.pk, max_uses=5, name="line 1").json()
    assert bob_api.post(f"/api/v1/enrollment-tokens/{made['id']}/revoke").status_code == 403
    revoked = alice_api.post(f"/api/v1/enrollment-tokens/{made['id']}/revoke")
    assert revoked.status_code == 200, revoked.content
    assert revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]
    response = FakeDevice().enroll(client, made["token"])
    assert response.status_code == 401 and "revoked" in response.json()["error"]
    assert alice_api.post("/api/v1/enrollment-tokens/999999/revoke").status_code == 404
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["enrollment-token.create", "enrollment-token.revoke"]


def test_it_lists_tokens_with_uses_and_expiry_but_never_the_secret(
    alice_api: Any, bob_api: Any, client: Client, group: Group
) -> None:
    made = _issue(alice_api, group=group.pk, max_uses=3, expires_in_hours=2).json()
    FakeDevice().enroll(client, made["token"])
    listed = bob_api.get(f"/api/v1/enrollment-tokens?group={group.pk}")
    assert listed.status_code == 200
    (item,) = listed.json()["items"]
    assert (item["uses"], item["max_uses"], item["status"]) == (1, 3, "active")
    assert made["token"] not in listed.content.decode()
    assert item["prefix"] == made["token"][:10]
    hours = (EnrollmentToken.objects.get().expires_at - timezone.now()).total_seconds() / 3600
    assert 1.9 < hours <= 2
    enroll_audit = AuditEvent.objects.get(action="device.enroll")
    assert enroll_audit.detail["token"] == item["prefix"]


def test_it_revokes_tokens_from_the_groups_page(
    alice: Any, bob: Any, client: Client, group: Group
) -> None:
    record, _ = EnrollmentToken.issue(group, user=alice)
    client.force_login(bob)
    page = client.get("/groups/")
    assert record.prefix in page.content.decode()
    denied = client.post("/groups/", {"action": "revoke-token", "token": record.pk})
    assert denied.status_code == 403
    client.force_login(alice)
    assert client.post("/groups/", {"action": "revoke-token", "token": "abc"}).status_code == 404
    done = client.post("/groups/", {"action": "revoke-token", "token": record.pk})
    assert done.status_code == 200
    record.refresh_from_db()
    assert record.revoked_at is not None
    assert AuditEvent.objects.filter(action="enrollment-token.revoke", actor=alice).exists()


def test_it_issues_single_use_tokens_from_the_groups_page(alice: Any, client: Client) -> None:
    group = Group.objects.create(name="g")
    client.force_login(alice)
    response = client.post("/groups/", {"action": "token", "group": group.pk})
    assert response.status_code == 200
    record = EnrollmentToken.objects.get()
    assert record.max_uses == 1 and record.expires_at is not None
