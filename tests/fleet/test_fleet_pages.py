"""Fleet pages and monitoring endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from fleet.models import Group, Rollout
from tests.fleet.publish_helpers import make_device, make_version, onnx_files, publish_now
from tests.fleet.rollout_helpers import LATENCY_EDGES
from tests.fleet.telemetry_helpers import ingest

pytestmark = pytest.mark.django_db


def test_every_fleet_page_renders_for_a_viewer(client: Client, bob: Any, tmp_path: Path) -> None:
    group = Group.objects.create(name="lab", selector="site=lab")
    device = make_device("pi")
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    from fleet.rollouts import engine as rollouts

    rollout = rollouts.create(user=None, bundle=bundle, group=group, waves=[100], gates={})
    client.force_login(bob)
    for url in (
        "/fleet/",
        "/devices/",
        f"/devices/{device.device.pk}/",
        "/groups/",
        "/rollouts/",
        f"/rollouts/{rollout.pk}/",
        f"/bundles/{bundle.pk}/monitor/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
    assert client.post("/groups/", {"name": "x"}).status_code == 403
    assert client.post(f"/rollouts/{rollout.pk}/pause/").status_code == 403


def test_the_groups_page_gives_a_copyable_enroll_command(client: Client, alice: Any) -> None:
    client.force_login(alice)
    client.post("/groups/", {"name": "plant-3", "selector": "site=plant-3"})
    group = Group.objects.get(name="plant-3")
    page = client.post("/groups/", {"action": "token", "group": group.pk})
    assert b"enroll --server http://testserver --token tfe_" in page.content
    assert b"tinyfleet-agent[onnx,text] @ http://testserver/agent/tinyfleet_agent-" in page.content
    bad = client.post("/groups/", {"name": "bad", "selector": "no equals"})
    assert b"key=value" in bad.content and not Group.objects.filter(name="bad").exists()


def test_the_rollout_page_pauses_and_resumes(client: Client, alice: Any, tmp_path: Path) -> None:
    group = Group.objects.create(name="lab")
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    client.force_login(alice)
    created = client.post(
        "/rollouts/new/",
        {"bundle": bundle.pk, "group": group.pk, "waves": "50,100", "soak_seconds": "60"},
    )
    rollout = Rollout.objects.get()
    assert created["Location"] == f"/rollouts/{rollout.pk}/"
    client.post(f"/rollouts/{rollout.pk}/pause/")
    assert Rollout.objects.get().status == "paused"
    client.post(f"/rollouts/{rollout.pk}/resume/")
    assert Rollout.objects.get().status == "running"
    fragment = client.get(f"/rollouts/{rollout.pk}/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    client.post(f"/rollouts/{rollout.pk}/cancel/")
    assert client.get(f"/rollouts/{rollout.pk}/", HTTP_HX_REQUEST="true").status_code == 286
    bad = client.post("/rollouts/new/", {"bundle": bundle.pk, "group": group.pk, "waves": "50,20"})
    assert bad.status_code == 302 and Rollout.objects.count() == 1


def test_metrics_merge_device_histograms_per_hour(alice_api: Any, tmp_path: Path) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    for i, bucket in enumerate((5, 15)):
        device = make_device(f"d{i}")
        counts = [0] * (len(LATENCY_EDGES) + 1)
        counts[bucket] = 100
        ingest(
            device.device,
            {
                "bundles": [
                    {
                        "bundle": bundle.pk,
                        "requests": 100,
                        "latency_ms": counts,
                        "golden": {"agreement": 1.0},
                    }
                ],
            },
        )
    series = alice_api.get(f"/api/v1/metrics?bundle={bundle.pk}").json()["series"]
    assert len(series) == 1
    row = series[0]
    assert row["devices"] == 2 and row["requests"] == 200
    assert LATENCY_EDGES[4] <= row["p50_ms"] <= LATENCY_EDGES[5]
    assert LATENCY_EDGES[14] <= row["p95_ms"] <= LATENCY_EDGES[15]
    overview = alice_api.get("/api/v1/metrics").json()
    assert overview["devices"]["offline"] == 2
    assert alice_api.get("/api/v1/metrics?hours=0").status_code == 400


def test_prometheus_endpoint_needs_a_token(client: Client, alice_api: Any) -> None:
    assert client.get("/metrics").status_code == 401
    text = alice_api.get("/metrics").content.decode()
    assert 'tinyfleet_devices{status="online"} 0' in text
    assert "# TYPE tinyfleet_jobs gauge" in text


def test_the_enroll_command_uses_the_public_url_when_set(
    client: Client, alice: Any, settings: Any
) -> None:
    settings.PUBLIC_URL = "https://fleet.example.com/"
    client.force_login(alice)
    group = Group.objects.create(name="plant-4", selector="site=plant-4")
    page = client.post("/groups/", {"action": "token", "group": group.pk}).content.decode()
    assert "@ https://fleet.example.com/agent/tinyfleet_agent-" in page
    assert "enroll --server https://fleet.example.com --token tfe_" in page
    assert "testserver" not in page.split('id="enroll-command">', 1)[1].split("</pre>", 1)[0]
