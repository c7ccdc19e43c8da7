"""Finding 6 of the outside review, checked the way the review found it: schemathesis
(the real tool, pinned in the dev extra) fuzzes both OpenAPI documents against a live
server and must end with no server error, no undocumented status, no schema violation
and no schema-valid request rejected (tests/security/schemathesis.toml lists the few
rules a schema cannot express). Bounded: about a minute in all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from fleet.models import Group
from tests.conftest import ApiClient
from tests.fleet.device_helpers import FakeDevice
from tests.security.conftest import token_for

CONFIG = Path(__file__).with_name("schemathesis.toml")


def _fuzz(url: str, credential: str, seconds: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
            "run", url, "-H", f"Authorization: Bearer {credential}",
            "--max-time", str(seconds), "--seed", "16",
        ],
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip


def _verdict(run: subprocess.CompletedProcess[str]) -> str:
    return run.stdout[-6000:] + run.stderr[-2000:]


@pytest.mark.django_db(transaction=True)
def test_it_answers_every_generated_request_with_a_documented_json_status(
    live_server: Any, charlie: Any, settings: Any
) -> None:
    settings.SITE_URL = live_server.url
    admin = ApiClient(charlie)
    group = Group.objects.create(name="fuzzed", selector="site=fuzz")
    device = FakeDevice(name="fuzzer")
    assert device.enroll(Client(), token_for(admin, group.pk)).status_code == 201

    devices = _fuzz(f"{live_server.url}/api/device/v1/openapi.json", device.credential, 25)
    assert devices.returncode == 0, _verdict(devices)
    assert " passed" in devices.stdout and "failures" not in devices.stdout, _verdict(devices)

    operators = _fuzz(f"{live_server.url}/api/v1/openapi.json", admin.token, 50)
    assert operators.returncode == 0, _verdict(operators)
    assert " passed" in operators.stdout and "failures" not in operators.stdout


@pytest.mark.django_db
def test_it_answers_unknown_api_paths_and_methods_with_json(alice_api: Any, client: Client) -> None:
    for path in ("/api/v1/nope", "/api/device/v1/nope", "/api/whatever"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["error"].startswith("not found")
    wrong = alice_api.client.delete("/api/v1/groups")
    assert wrong.status_code == 405 and wrong.json() == {"error": "method not allowed"}
    assert "GET" in wrong["Allow"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models?offset=99999999999999999999999",
        "/api/v1/models?limit=-5",
        "/api/v1/jobs?version=99999999999999999999999",
        "/api/v1/devices?group=99999999999999999999",
        "/api/v1/metrics?hours=100000",
        "/api/v1/enrollment-tokens?group=abc",
    ],
)
def test_it_refuses_out_of_range_numbers_with_a_json_400(alice_api: Any, path: str) -> None:
    response = alice_api.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/v1/rollouts/abc", "/api/v1/versions/99999999999999999999999"]
)
def test_it_answers_malformed_or_huge_ids_with_a_json_4xx(alice_api: Any, path: str) -> None:
    response = alice_api.get(path)
    assert response.status_code in (400, 404), response.content
    assert response.json()["error"]


@pytest.mark.django_db
def test_it_refuses_text_with_nul_characters(alice_api: Any) -> None:
    for response in (
        alice_api.get("/api/v1/bundles?model=a%00b"),
        alice_api.post("/api/v1/groups", {"name": "a\u0000b"}),
        alice_api.get("/api/v1/bundles/b-%00"),
    ):
        assert response.status_code == 400, response.content
        assert "NUL" in response.json()["error"]
    assert not Group.objects.exists()


@pytest.mark.django_db
def test_it_documents_the_rollout_actions_as_an_enum(client: Client) -> None:
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"repeated keys: {keys}"  # Swagger UI refuses
        return dict(pairs)

    for url in ("/api/v1/openapi.json", "/api/device/v1/openapi.json"):
        json.loads(client.get(url).content, object_pairs_hook=no_repeats)
    schema = client.get("/api/v1/openapi.json").json()
    operation = schema["paths"]["/api/v1/rollouts/{rollout_id}/{action}"]["post"]
    (action,) = [p for p in operation["parameters"] if p["name"] == "action"]
    assert action["schema"]["enum"] == ["pause", "resume", "promote", "rollback", "cancel"]
    assert {"400", "401", "403", "404", "409", "429"} <= set(operation["responses"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ["/devices/?group=abc", "/devices/?group=99999999999999999999", "/rollouts/preview/?group=x"],
)
def test_it_answers_pages_given_a_bad_group_id_without_a_500(
    alice: Any, client: Client, path: str
) -> None:
    client.force_login(alice)
    assert client.get(path).status_code in (200, 404)
    for action in ("token", "fallback"):
        answer = client.post("/groups/", {"action": action, "group": "abc"})
        assert answer.status_code == 404
    created = client.post("/rollouts/new/", {"bundle": "b-x", "group": "abc"})
    assert created.status_code == 404
