from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.django_db
def test_healthz_checks_db_broker_and_storage_without_auth(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["checks"] == {"db": "ok", "broker": "ok", "storage": "ok"}


@pytest.mark.django_db
def test_healthz_reports_a_broken_broker(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tinyfleet import views

    def broken() -> str:
        raise ConnectionError("broker down")

    monkeypatch.setattr(views, "_check_broker", broken)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "broker down" in response.json()["checks"]["broker"]
