"""Finding 9: logins are rate limited by django-axes, API calls per credential with
django-ratelimit counting in the shared Django cache; the pages carry a self-only CSP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.cache import cache
from django.test import Client

from fleet.models import Group
from tests.conftest import ROOT, ApiClient
from tests.fleet.device_helpers import FakeDevice
from tests.security.conftest import token_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    cache.clear()


def _login(client: Client, username: str, password: str) -> Any:
    # Form-encoded, as a browser sends the login form.
    body = urlencode({"username": username, "password": password})
    return client.post("/login/", body, content_type="application/x-www-form-urlencoded")


def test_it_locks_out_a_username_after_repeated_failed_logins(alice: Any, bob: Any) -> None:
    client = Client()
    answers = [_login(client, "alice", "wrong").status_code for _ in range(5)]
    assert answers == [200, 200, 200, 200, 429]  # the form again, then the lockout
    locked = _login(client, "alice", "pw-alice")  # even the right password now
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user from the same address is not affected.
    assert _login(Client(), "bob", "pw-bob").status_code == 302


def test_it_limits_operator_api_calls_per_token(alice: Any, settings: Any) -> None:
    settings.API_RATE_LIMIT = "3/m"
    first, second = ApiClient(alice), ApiClient(alice)
    answers = [first.get("/api/v1/groups").status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    limited = first.get("/api/v1/groups")
    assert limited.json()["error"].startswith("too many requests")
    assert int(limited["Retry-After"]) >= 1
    assert second.get("/api/v1/groups").status_code == 200  # its own count


def test_it_limits_device_calls_and_enrollment(alice_api: Any, settings: Any) -> None:
    group = Group.objects.create(name="g")
    settings.ENROLL_RATE_LIMIT = "2/m"
    tokens = [token_for(alice_api, group.pk) for _ in range(3)]
    enrolled = [
        FakeDevice(name=f"d{i}").enroll(Client(), t).status_code for i, t in enumerate(tokens)
    ]
    assert enrolled == [201, 201, 429]
    settings.DEVICE_RATE_LIMIT = "2/m"
    device = FakeDevice(name="late")
    settings.ENROLL_RATE_LIMIT = ""
    assert device.enroll(Client(), token_for(alice_api, group.pk)).status_code == 201
    calls = [device.client().get("/api/device/v1/state").status_code for _ in range(3)]
    assert calls == [200, 200, 429]


def test_it_sends_a_self_only_content_security_policy(alice: Any, client: Client) -> None:
    client.force_login(alice)
    policy = client.get("/groups/")["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_it_keeps_scripts_and_styles_out_of_the_templates() -> None:
    # Inline handlers, <script> bodies and style attributes would be blocked by the CSP.
    inline = re.compile(r"""\son[a-z]+\s*=|<style|\sstyle\s*=|<script(?![^>]*\bsrc=)""")
    offenders = [
        str(path.relative_to(ROOT))
        for path in Path(ROOT / "templates").rglob("*.html")
        if inline.search(path.read_text())
    ]
    assert offenders == []
