"""The in-field page and a device page draw their charts (vendored Chart.js, static
files only) in a real browser, PSI thresholds included, without script errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.fleet.drift_helpers import _classifier, _shifted
from tests.fleet.publish_helpers import make_device
from tests.fleet.telemetry_helpers import ingest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _login(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/fleet/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"pw-{username}")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/fleet/")


def _datasets(page: Any, canvas_id: str) -> list[str]:
    page.wait_for_function(f"() => window.Chart && Chart.getChart('{canvas_id}')")
    labels: list[str] = page.evaluate(
        f"() => Chart.getChart('{canvas_id}').data.datasets.map(d => d.label)"
    )
    return labels


def test_the_monitor_and_device_pages_draw_their_charts(
    live_server: Any, bob: Any, page: Any, tmp_path: Path
) -> None:
    bundle = _classifier(tmp_path)
    device = make_device("charted")
    latency = [0] * 43
    latency[12] = 40
    now = timezone.now()
    for hours_ago in (2, 1, 0):
        section = {"bundle": bundle.pk, "requests": 40, "latency_ms": latency}
        section["confidence"] = _shifted()
        ingest(device.device, {"bundles": [section]}, received_at=now - timedelta(hours=hours_ago))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    base = live_server.url
    _login(page, base, "bob")
    page.goto(f"{base}/bundles/{bundle.pk}/monitor/")
    assert _datasets(page, "latency-chart") == ["p50_ms", "p95_ms", "p99_ms"]
    assert _datasets(page, "psi-chart") == ["confidence_psi", "0.1 moderate", "0.25 major"]
    assert "major shift" in page.inner_text("[data-testid=drift]")
    page.goto(f"{base}/devices/{device.id}/")
    assert _datasets(page, "device-chart") == [f"p95 ms, {bundle.pk}"]
    page.screenshot(path=str(tmp_path / "device.png"), full_page=True)
    assert errors == []
