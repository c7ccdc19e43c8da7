"""In the browser, from the keyboard: add a webhook channel, copy its secret, send a
test message (a real Celery worker posts it to a real local receiver) and read the
outcome in the delivery log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.alerts import signing
from tests.browser.conftest import screenshot
from tests.browser.helpers import _login
from tests.conftest import Worker
from tests.fleet.alert_helpers import webhook_receiver

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_adds_a_webhook_and_sends_a_test_message(
    live_server: Any, celery_worker: Worker, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    _login(page, base, "alice")
    with webhook_receiver() as receiver:
        page.goto(f"{base}/fleet/alerts/")
        form = page.locator("[data-testid=channel-form]")
        form.locator("input[name=name]").fill("on-call")
        form.locator("input[name=url]").fill(receiver.url)
        form.locator("input[name=url]").press("Enter")  # submit from the keyboard
        secret = page.locator("[data-testid=new-secret] code").first.inner_text()
        assert secret.startswith("whsec_")
        screenshot(page, "alerts-1-channel-added")
        page.locator("[data-testid=channels] button", has_text="Send test").click()
        deliveries = page.locator("[data-testid=deliveries]")
        assert "test" in deliveries.inner_text()
        deadline = time.monotonic() + 60
        while "delivered" not in deliveries.inner_text() and time.monotonic() < deadline:
            time.sleep(1)
            page.reload()
        assert "delivered" in deliveries.inner_text()
        screenshot(page, "alerts-2-test-delivered")
        (request,) = receiver.requests
        signing.verify(
            secret,
            request.body,
            request.headers["X-Tinyfleet-Timestamp"],
            request.headers["X-Tinyfleet-Signature"],
        )
        assert json.loads(request.body)["event"] == "test"
    rules = page.locator("[data-testid=rules]").inner_text()
    assert "Rollout rolled back" in rules and "Free disk below (MB)" in rules
