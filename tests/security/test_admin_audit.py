"""Finding 8: the audit log cannot be edited or deleted in Django admin, and role and
access changes made there are audited (real admin views, a real superuser session)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import AuditEvent, Profile, audit

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(db: None) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")
    client = Client()
    client.force_login(user)
    return client


def test_it_shows_audit_events_read_only(root: Client, alice: Any) -> None:
    event = audit(alice, "group.create", None, selector="site=a")
    url = f"/admin/accounts/auditevent/{event.pk}"
    assert root.get("/admin/accounts/auditevent/").status_code == 200
    assert root.get(f"{url}/change/").status_code == 200  # viewable
    edited = root.post(f"{url}/change/", {"action": "forged", "actor_name": "nobody"})
    assert edited.status_code == 403
    assert root.post(f"{url}/delete/", {"post": "yes"}).status_code == 403
    bulk = root.post(
        "/admin/accounts/auditevent/",
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert root.get("/admin/accounts/auditevent/add/").status_code == 403
    event.refresh_from_db()
    assert event.action == "group.create" and AuditEvent.objects.filter(pk=event.pk).exists()


def test_it_audits_role_changes_made_in_admin(root: Client, bob: Any) -> None:
    profile = Profile.objects.get(user=bob)
    response = root.post(
        f"/admin/accounts/profile/{profile.pk}/change/", {"user": bob.pk, "role": "admin"}
    )
    assert response.status_code == 302, response.content[:500]
    change = AuditEvent.objects.get(action="role.change")
    assert change.actor_name == "root" and change.object_id == str(bob.pk)
    assert change.detail == {"role": "admin", "before": "viewer", "via": "admin"}


def test_it_audits_superuser_grants_made_in_admin(root: Client, bob: Any) -> None:
    form = root.get(f"/admin/auth/user/{bob.pk}/change/")
    assert form.status_code == 200
    data = {
        "username": "bob",
        "email": bob.email,
        "is_active": "on",
        "is_staff": "on",
        "is_superuser": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
    }
    response = root.post(f"/admin/auth/user/{bob.pk}/change/", data)
    assert response.status_code == 302, response.content[:800]
    change = AuditEvent.objects.get(action="user.access-change")
    assert change.detail["after"]["is_superuser"] is True
    assert change.detail["before"]["is_superuser"] is False
