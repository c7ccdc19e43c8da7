"""API tokens (hashed, revocable), roles on pages and endpoints, CSRF, audit log."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import ApiToken, AuditEvent, hash_token

pytestmark = pytest.mark.django_db


def test_it_stores_only_a_hash_of_the_token(alice: Any) -> None:
    token, raw = ApiToken.issue(alice, "ci")
    stored = ApiToken.objects.get(pk=token.pk)
    assert raw not in (stored.digest, stored.prefix, stored.name)
    assert stored.digest == hash_token(raw)
    assert ApiToken.authenticate(raw) == stored


def test_create_api_token_command_prints_a_working_token(alice: Any) -> None:
    out = io.StringIO()
    call_command("create_api_token", "alice", stdout=out)
    raw = out.getvalue().strip()
    response = Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.json() == {"username": "alice", "role": "operator"}


def test_create_api_token_command_refuses_an_unknown_user(db: None) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no user named"):
        call_command("create_api_token", "mallory")


def test_it_creates_and_revokes_tokens_through_the_api(alice_api: Any) -> None:
    created = alice_api.post("/api/v1/tokens", {"name": "laptop"})
    assert created.status_code == 201
    raw = created.json()["token"]
    assert Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    assert alice_api.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 204
    assert Client().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401
    assert AuditEvent.objects.filter(action="token.revoke").exists()


def test_an_operator_cannot_revoke_another_users_token(alice_api: Any, bob: Any) -> None:
    token, _raw = ApiToken.issue(bob, "bobs")
    response = alice_api.delete(f"/api/v1/tokens/{token.pk}")
    assert response.status_code == 403
    assert "your own" in response.json()["error"]
    assert ApiToken.objects.get(pk=token.pk).is_active


def test_an_admin_can_revoke_anyones_token(charlie_api: Any, bob: Any) -> None:
    token, _ = ApiToken.issue(bob, "bobs")
    assert charlie_api.delete(f"/api/v1/tokens/{token.pk}").status_code == 204
    assert not ApiToken.objects.get(pk=token.pk).is_active


def test_users_see_only_their_own_tokens(alice_api: Any, bob: Any) -> None:
    ApiToken.issue(bob, "bobs")
    names = [t["name"] for t in alice_api.get("/api/v1/tokens").json()["items"]]
    assert names == ["tests"]


def test_the_tokens_page_shows_a_new_token_once_and_revokes(client: Any, alice: Any) -> None:
    client.force_login(alice)
    page = client.post("/tokens/", {"name": "from-the-page"})
    raw = page.context["new_token"]
    assert raw.encode() in page.content
    assert raw.encode() not in client.get("/tokens/").content
    token = ApiToken.objects.get(name="from-the-page")
    client.post(f"/tokens/{token.pk}/revoke/")
    assert not ApiToken.objects.get(pk=token.pk).is_active


def test_the_tokens_page_refuses_revoking_someone_elses(client: Any, alice: Any, bob: Any) -> None:
    token, _ = ApiToken.issue(bob, "bobs")
    client.force_login(alice)
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 403
    assert ApiToken.objects.get(pk=token.pk).is_active


def test_pages_need_a_login(client: Any) -> None:
    response = client.get("/models/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_a_viewer_cannot_open_the_upload_page(client: Any, bob: Any) -> None:
    client.force_login(bob)
    assert client.get("/models/").status_code == 200
    assert client.get("/models/upload/").status_code == 403


def test_only_admins_read_the_audit_log(client: Any, alice: Any, charlie: Any) -> None:
    client.force_login(alice)
    assert client.get("/audit/").status_code == 403
    client.force_login(charlie)
    assert client.get("/audit/").status_code == 200


def test_forms_are_csrf_protected(alice: Any) -> None:
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(alice)
    assert csrf_client.post("/tokens/", {"name": "x"}).status_code == 403
    assert not ApiToken.objects.filter(name="x").exists()


def test_session_api_calls_are_csrf_protected(alice: Any) -> None:
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(alice)
    response = csrf_client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json")
    assert response.status_code in (401, 403)
    assert not ApiToken.objects.filter(name="x").exists()


def test_ensure_admin_creates_the_first_admin_once(db: None, monkeypatch: Any) -> None:
    from django.contrib.auth import get_user_model

    monkeypatch.delenv("TINYFLEET_ADMIN_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    password = out.getvalue().split("password: ")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password(password)
    again = io.StringIO()
    call_command("ensure_admin", stdout=again)
    assert again.getvalue() == ""
    assert get_user_model().objects.count() == 1


def test_ensure_admin_takes_the_password_from_the_environment(db: None, monkeypatch: Any) -> None:
    from django.contrib.auth import get_user_model

    monkeypatch.setenv("TINYFLEET_ADMIN_PASSWORD", "s3cret-from-env")
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    assert "s3cret" not in out.getvalue()
    assert get_user_model().objects.get(username="admin").check_password("s3cret-from-env")


def test_create_user_refuses_an_existing_user_unless_asked_to_update(db: None) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management.base import CommandError

    from accounts.models import Profile

    call_command("create_user", "dora", "--role", "viewer", "--password", "first-pass-1")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_user", "dora", "--role", "admin", "--password", "second-pass-2")
    user = get_user_model().objects.get(username="dora")
    assert user.check_password("first-pass-1") and Profile.objects.get(user=user).role == "viewer"
    call_command(
        "create_user", "dora", "--role", "operator", "--password", "third-pass-3", "--update"
    )
    user.refresh_from_db()
    assert user.check_password("third-pass-3") and Profile.objects.get(user=user).role == "operator"
