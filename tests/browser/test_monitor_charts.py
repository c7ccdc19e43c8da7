"""Journey 3 in a real browser: in-field accuracy and latency of a bundle, per minute
for the last hour, drilled down into one group, with times in the viewer's time zone,
sortable tables, PSI thresholds, and a device's health charts; no script errors and no
inline scripts (vendored Chart.js and static files only)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from fleet.models import Group
from tests.browser.conftest import screenshot
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


def _fleet(tmp_path: Path) -> tuple[str, Any, Any, Group]:
    bundle = _classifier(tmp_path)
    north = Group.objects.create(name="north", selector="site=north")
    Group.objects.create(name="south", selector="site=south")
    n, s = make_device("north-1"), make_device("south-1")
    for d, site in ((n, "north"), (s, "south")):
        d.device.labels = {"site": site}
        d.device.save()
    now = timezone.now()
    for minutes_ago in (40, 20, 2):
        for d, bucket, right in ((n, 12, 9), (s, 20, 6)):
            latency = [0] * 43
            latency[bucket] = 40
            section = {
                "bundle": bundle.pk,
                "requests": 40,
                "latency_ms": latency,
                "confidence": _shifted(),
                "feedback": [
                    {"predicted": "a", "actual": "a", "count": right},
                    {"predicted": "a", "actual": "b", "count": 10 - right},
                ],
            }
            ingest(
                d.device,
                {
                    "bundles": [section],
                    "system": {"rss_bytes": 80 * 2**20, "cpu_seconds": 1.5, "cpu_temp_c": 51.0},
                    "period_start": (now - timedelta(minutes=minutes_ago + 1)).isoformat(),
                    "period_end": (now - timedelta(minutes=minutes_ago)).isoformat(),
                },
                received_at=now - timedelta(minutes=minutes_ago),
            )
    return bundle.pk, n, s, north


def test_an_operator_watches_accuracy_and_latency_and_drills_into_a_group(
    live_server: Any, bob: Any, browser: Any, tmp_path: Path
) -> None:
    bundle, north_device, _, north = _fleet(tmp_path)
    # A viewer in Tokyo: times must show in their zone, not the server's UTC.
    context = browser.new_context(timezone_id="Asia/Tokyo", locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    base = live_server.url
    _login(page, base, "bob")

    page.goto(f"{base}/bundles/{bundle}/monitor/?range=1h")
    assert "one point per minute" in page.inner_text("[data-testid=bucket-note]")
    assert _datasets(page, "latency-chart") == ["p50", "p95", "p99"]
    assert _datasets(page, "accuracy-chart") == ["feedback accuracy", "golden agreement"]
    assert _datasets(page, "psi-chart") == ["PSI", "0.1 moderate", "0.25 major"]
    assert "major shift" in page.inner_text("[data-testid=drift]")
    first_time = page.locator("[data-testid=monitor-table] tbody time").first
    assert "JST" in first_time.inner_text() or "GMT+9" in first_time.inner_text()
    assert first_time.get_attribute("title").endswith("+00:00")  # UTC kept for reference
    rows = page.locator("[data-testid=monitor-table] tbody tr")
    assert rows.count() == 3
    accuracies = rows.locator("td:nth-child(10)").all_inner_texts()
    assert all(a.startswith("0.750") for a in accuracies), accuracies  # (9 + 6) / 20
    screenshot(page, "journey3-1-fleet-last-hour")

    # Sort the per-group table by p95 from the keyboard: south (slower) comes last.
    groups = page.locator("[data-testid=group-table]")
    sort = groups.locator("th button", has_text="p95 ms")
    sort.focus()
    page.keyboard.press("Enter")
    assert groups.locator("th", has_text="p95 ms").get_attribute("aria-sort") == "ascending"
    assert groups.locator("tbody tr td:first-child").all_inner_texts() == ["north", "south"]
    page.keyboard.press("Enter")
    assert groups.locator("tbody tr td:first-child").all_inner_texts() == ["south", "north"]

    groups.locator("a", has_text="north").click()
    page.wait_for_url(f"**group={north.pk}")
    assert "group north" in page.inner_text("h1")
    assert _datasets(page, "latency-chart") == ["p50", "p95", "p99"]
    accuracies = page.locator("[data-testid=monitor-table] tbody tr td:nth-child(10)")
    assert all(a.startswith("0.900") for a in accuracies.all_inner_texts())
    screenshot(page, "journey3-2-group-north")

    page.goto(f"{base}/devices/{north_device.id}/?range=1h")
    assert _datasets(page, "device-chart") == [f"p95 ms, {bundle}"]
    page.wait_for_function("() => Chart.getChart(document.querySelector('[data-metric=rss_mb]'))")
    assert page.locator("[data-testid=device-health] canvas").count() == 4  # rss, cpu, temp, drops
    assert page.locator("text=not measured on this device").count() == 3  # disk, energy, backlog
    screenshot(page, "journey3-3-device-health")

    page.goto(f"{base}/fleet/")
    assert "north-1" in page.inner_text("[data-testid=fleet-health]")
    screenshot(page, "journey3-4-fleet-overview")
    assert errors == []
    html = page.content()
    assert "onclick=" not in html and "<script>" not in html
    context.close()
