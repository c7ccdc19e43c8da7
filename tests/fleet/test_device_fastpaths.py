"""The device fast paths in front of Django (fleet/state.py DeviceFastPathApp,
fleet/telemetry_fastpath.py, fleet/fastsql.py): the same answers and the same stored rows
as the views, one prepared statement each, and everything unusual left to the views
(real PostgreSQL, the real WSGI application)."""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.api.fastpath import DeviceFastPathApp
from fleet.models import Device, TelemetryBatch
from fleet.telemetry.validation import bundles_named
from tests.fleet.publish_helpers import TestDevice, make_device
from tests.fleet.rollup_helpers import _batch, _hour, _section
from tests.fleet.telemetry_helpers import grant

# The fast paths use PostgreSQL prepared statements (SQLite goes to the views).
pytestmark = [pytest.mark.django_db, pytest.mark.services("postgres")]

STATE = "/api/device/v1/state"
TELEMETRY = "/api/device/v1/telemetry"


@pytest.fixture
def deferred(settings: Any) -> None:
    settings.TELEMETRY_FOLD = "deferred"


class Inner:
    """Django's real application, counting the requests that reach it."""

    def __init__(self) -> None:
        from django.core.wsgi import get_wsgi_application

        self.django = get_wsgi_application()
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        from django.core.signals import request_finished, request_started
        from django.db import close_old_connections

        self.calls += 1
        # As django.test.Client does: the test's transaction must outlive the request.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = self.django(environ, start_response)
            content = b"".join(response)
            response.close()  # type: ignore[attr-defined]
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        return [content]


def _call(
    app: Callable[..., Iterable[bytes]],
    method: str,
    path: str,
    credential: str,
    body: bytes = b"",
    etag: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": f"Bearer {credential}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
    }
    if etag:
        environ["HTTP_IF_NONE_MATCH"] = etag
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    content = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], content


def _body(device: TestDevice, minutes: int = 0, seed: int = 1) -> bytes:
    import random

    hour = _hour(timezone.now()) - timedelta(hours=1)
    batch = _batch(_section(random.Random(seed)), hour + timedelta(minutes=minutes))
    grant(device.device, *bundles_named(batch))  # devices report only on their bundles
    return json.dumps(batch).encode()


def test_it_answers_an_unchanged_poll_before_django() -> None:
    device = make_device()
    inner = Inner()
    app = DeviceFastPathApp(inner)
    status, headers, _ = _call(app, "GET", STATE, device.credential)
    assert status == 200 and inner.calls == 1
    etag = headers["ETag"]
    status, headers, content = _call(app, "GET", STATE, device.credential, etag=etag)
    assert (status, headers["ETag"], content, inner.calls) == (304, etag, b"", 1)
    # A stale ETag, a revoked device, a bad credential: the view answers.
    assert _call(app, "GET", STATE, device.credential, etag='"old"')[0] == 200
    Device.objects.filter(pk=device.device.pk).update(revoked_at=timezone.now())
    assert _call(app, "GET", STATE, device.credential, etag=etag)[0] == 401
    assert _call(app, "GET", STATE, "tfd_nobody", etag=etag)[0] == 401
    assert inner.calls == 4


def test_it_stores_telemetry_before_django_exactly_as_the_view_does(
    deferred: None, settings: Any
) -> None:
    device = make_device()
    inner = Inner()
    app = DeviceFastPathApp(inner)
    body = _body(device)
    status, headers, content = _call(app, "POST", TELEMETRY, device.credential, body)
    assert (status, json.loads(content), inner.calls) == (202, {"accepted": True}, 0)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    # The replay is acknowledged and counted once.
    status, _, content = _call(app, "POST", TELEMETRY, device.credential, body)
    assert (status, json.loads(content), inner.calls) == (200, {"duplicate": True}, 0)
    fast = TelemetryBatch.objects.get()
    # The view (the fast path switched off) stores the same batch the same way.
    TelemetryBatch.objects.all().delete()
    settings.DATABASE_PREPARED_STATEMENTS = False
    from fleet.telemetry import fastpath

    real = fastpath.wants
    fastpath.wants = lambda meta: False  # type: ignore[assignment]
    try:
        assert _call(app, "POST", TELEMETRY, device.credential, body)[0] == 202
    finally:
        fastpath.wants = real  # type: ignore[assignment]
    assert inner.calls == 1
    view = TelemetryBatch.objects.get()
    fields = ("batch_id", "device_id", "bundle", "period_start", "period_end", "body", "folded")
    assert {f: getattr(fast, f) for f in fields} == {f: getattr(view, f) for f in fields}
    assert abs(fast.received_at - view.received_at) < timedelta(minutes=1)


def test_it_leaves_bad_batches_and_unknown_devices_to_the_view(deferred: None) -> None:
    device = make_device()
    inner = Inner()
    app = DeviceFastPathApp(inner)
    bad = json.loads(_body(device))
    bad["bundles"][0]["latency_ms"] = [1, 2]
    status, _, content = _call(app, "POST", TELEMETRY, device.credential, json.dumps(bad).encode())
    # The view read the body the fast path had already read, and explained the error.
    assert status == 400 and "latency_ms" in json.loads(content)["error"]
    assert _call(app, "POST", TELEMETRY, "tfd_nobody", _body(device))[0] == 401
    Device.objects.filter(pk=device.device.pk).update(revoked_at=timezone.now())
    assert _call(app, "POST", TELEMETRY, device.credential, _body(device, 1))[0] == 401
    assert inner.calls == 3 and not TelemetryBatch.objects.exists()


def test_it_stores_a_batch_with_one_statement_and_refreshes_last_seen_when_due(
    deferred: None, django_assert_num_queries: Any
) -> None:
    device = make_device()
    app = DeviceFastPathApp(Inner())
    stale = timezone.now() - timedelta(hours=1)
    Device.objects.filter(pk=device.device.pk).update(last_seen_at=stale)
    first, second = _body(device, 1), _body(device, 2)
    with django_assert_num_queries(1):
        assert _call(app, "POST", TELEMETRY, device.credential, first)[0] == 202
    seen = Device.objects.get(pk=device.device.pk).last_seen_at
    assert seen is not None and seen > stale
    with django_assert_num_queries(1):
        assert _call(app, "POST", TELEMETRY, device.credential, second)[0] == 202
    assert Device.objects.get(pk=device.device.pk).last_seen_at == seen  # fresh: untouched
    assert TelemetryBatch.objects.filter(folded=False).count() == 2


def test_it_runs_the_fast_statements_prepared_unless_told_not_to(settings: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.fail("prepared statements are a PostgreSQL feature")
    device = make_device()
    app = DeviceFastPathApp(Inner())
    etag = _call(app, "GET", STATE, device.credential)[1]["ETag"]

    def prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                ["%credential_digest%"],
            )
            return int(cursor.fetchone()[0])

    settings.DATABASE_PREPARED_STATEMENTS = False
    assert _call(app, "GET", STATE, device.credential, etag=etag)[0] == 304
    assert prepared() == 0
    settings.DATABASE_PREPARED_STATEMENTS = True
    for _ in range(3):
        assert _call(app, "GET", STATE, device.credential, etag=etag)[0] == 304
    assert prepared() == 1  # prepared once, then reused


def test_the_middleware_fast_path_stores_telemetry_too(deferred: None) -> None:
    # django.test.Client goes through the middleware, not the WSGI wrapper.
    device = make_device()
    client = device.client()
    body = _body(device, 3)
    response = client.post(TELEMETRY, body, content_type="application/json")
    assert response.status_code == 202 and response.json() == {"accepted": True}
    again = client.post(TELEMETRY, body, content_type="application/json")
    assert again.status_code == 200 and again.json() == {"duplicate": True}
    batch = TelemetryBatch.objects.get()
    assert batch.batch_id == uuid.UUID(json.loads(body)["batch_id"]) and not batch.folded


def test_the_query_log_shows_the_prepared_statements_sql() -> None:
    from django.test.utils import CaptureQueriesContext

    device = make_device()
    app = DeviceFastPathApp(Inner())
    etag = _call(app, "GET", STATE, device.credential)[1]["ETag"]
    with CaptureQueriesContext(connection) as captured:
        assert _call(app, "GET", STATE, device.credential, etag=etag)[0] == 304
    assert len(captured.captured_queries) == 1
    assert "credential_digest" in captured.captured_queries[0]["sql"]


def test_it_leaves_unassigned_bundles_and_pending_devices_to_the_view(deferred: None) -> None:
    # The fast path must not be a way around the device API's lane checks.
    from fleet.models.devices import Admission

    device = make_device()
    inner = Inner()
    app = DeviceFastPathApp(inner)
    foreign = json.loads(_body(device))
    foreign["bundles"][0]["bundle"] = "b-never-assigned"
    status, _, content = _call(
        app, "POST", TELEMETRY, device.credential, json.dumps(foreign).encode()
    )
    assert status == 400 and "never assigned" in json.loads(content)["error"]
    Device.objects.filter(pk=device.device.pk).update(admission=Admission.PENDING)
    assert _call(app, "POST", TELEMETRY, device.credential, _body(device, 1))[0] == 403
    assert inner.calls == 2 and not TelemetryBatch.objects.exists()
