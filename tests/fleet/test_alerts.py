"""Alert rules, signing, sealed secrets and the alerts page (delivery itself runs in a
real Celery worker: tests/fleet/test_alerts_delivery.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent
from fleet.alerts import delivery, engine, signing
from fleet.alerts.models import Alert, Channel, Delivery, Rule, RuleKind
from fleet.models import DeviceEvent, Group
from fleet.rollouts import engine as rollouts
from fleet.security.masterkey import MasterKeyError
from tests.fleet.alert_helpers import webhook_receiver
from tests.fleet.publish_helpers import make_device, make_version, onnx_files, publish_now
from tests.fleet.telemetry_helpers import ingest

pytestmark = pytest.mark.django_db


def _login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _webhook(name: str = "ops", url: str = "http://127.0.0.1:9/hook") -> tuple[Channel, str]:
    channel = Channel.objects.create(name=name, kind="webhook", url=url)
    return channel, channel.new_secret()


def test_it_verifies_a_signature_and_refuses_tampering_and_replays() -> None:
    body = b'{"event":"test"}'
    headers = signing.signed_headers("s3cret", body, now=1_000_000)
    ts, sig = headers["X-Tinyfleet-Timestamp"], headers["X-Tinyfleet-Signature"]
    signing.verify("s3cret", body, ts, sig, now=1_000_010)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify("s3cret", body + b" ", ts, sig, now=1_000_010)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify("other", body, ts, sig, now=1_000_010)
    with pytest.raises(signing.SignatureError, match="away from now"):
        signing.verify("s3cret", body, ts, sig, now=1_000_000 + 3600)


def test_it_keeps_the_webhook_secret_sealed_and_bound_to_its_row() -> None:
    channel, secret = _webhook()
    channel.refresh_from_db()
    assert secret.encode() not in bytes(channel.secret_sealed)
    assert channel.secret() == secret
    other = Channel.objects.create(name="copy", kind="webhook", url="http://127.0.0.1:9/")
    other.secret_sealed = channel.secret_sealed  # a sealed value copied to another row
    with pytest.raises(MasterKeyError):
        other.secret()


def test_it_opens_one_alert_per_paused_rollout_and_resolves_it_on_resume(
    tmp_path: Path, alice: Any
) -> None:
    channel, _ = _webhook()
    group = Group.objects.create(name="plant", selector="site=plant")
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    rollout = rollouts.create(user=alice, bundle=bundle, group=group, waves=[100], gates={})
    rollouts.pause(rollout, alice, "looking at it")
    assert engine.evaluate().opened == 1
    assert engine.evaluate().opened == 0  # still paused: no second alert or message
    alert = Alert.objects.get(rule__kind=RuleKind.ROLLOUT_PAUSED)
    assert alert.key == f"rollout:{rollout.pk}" and "looking at it" in alert.message
    (sent,) = Delivery.objects.filter(alert=alert)
    assert sent.channel == channel and sent.event == "alert.opened"
    assert sent.payload["alert"]["url"].endswith(f"/rollouts/{rollout.pk}/")
    rollouts.resume(rollout, alice)
    assert engine.evaluate().resolved == 1
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert Delivery.objects.filter(alert=alert, event="alert.resolved").count() == 1


def test_it_sends_nothing_for_a_disabled_rule_and_routes_to_chosen_channels() -> None:
    ops, _ = _webhook("ops")
    _webhook("other")
    stale = Rule.objects.get_or_create(kind=RuleKind.DEVICE_STALE)[0]
    stale.channels.set([ops])
    device = make_device("pi-old").device
    device.last_seen_at = timezone.now() - timedelta(days=3)
    device.save()
    engine.evaluate()
    assert list(Delivery.objects.values_list("channel__name", flat=True)) == ["ops"]
    Rule.objects.filter(kind=RuleKind.DEVICE_STALE).update(enabled=False)
    engine.evaluate()  # the open alert resolves quietly
    assert Delivery.objects.count() == 1
    assert not Alert.objects.filter(resolved_at__isnull=True).exists()


def test_it_raises_health_alerts_from_the_thresholds() -> None:
    engine.ensure_rules()
    Rule.objects.filter(kind=RuleKind.TEMPERATURE_ABOVE).update(threshold=70)
    hot, cool = make_device("pi-hot").device, make_device("pi-cool").device
    ingest(hot, {"system": {"cpu_temp_c": 83.5, "rss_bytes": 50 * 2**20}, "dropped": 4})
    ingest(cool, {"system": {"cpu_temp_c": 41.0, "disk_free_bytes": 100 * 2**20}})
    engine.evaluate()
    by_kind = {(a.rule.kind, a.detail["device"]) for a in Alert.objects.all()}
    assert (RuleKind.TEMPERATURE_ABOVE, str(hot.pk)) in by_kind
    assert (RuleKind.OUTBOX_DROPPING, str(hot.pk)) in by_kind
    assert (RuleKind.DISK_BELOW, str(cool.pk)) in by_kind  # 100 MB < the 500 MB default
    assert (RuleKind.TEMPERATURE_ABOVE, str(cool.pk)) not in by_kind
    assert (RuleKind.MEMORY_ABOVE, str(hot.pk)) not in by_kind


def test_it_alerts_on_a_failed_self_test() -> None:
    device = make_device("pi-7").device
    DeviceEvent.objects.create(
        device=device, bundle="b-1", state="selftest-failed", reason="agreement 0.07 < 0.95"
    )
    engine.evaluate()
    alert = Alert.objects.get(rule__kind=RuleKind.SELFTEST_FAILED)
    assert alert.severity == "critical" and "0.07" in alert.message


def test_it_does_not_follow_redirects_or_retry_refusals() -> None:
    channel, _ = _webhook()
    with webhook_receiver([302, 400]) as receiver:
        Channel.objects.filter(pk=channel.pk).update(url=receiver.url)
        channel.refresh_from_db()
        d = Delivery.objects.create(channel=channel, event="test", payload={"event": "test"})
        assert delivery.attempt(d.pk) is None
        d.refresh_from_db()
        assert d.status == "failed" and "redirects are not followed" in d.error
        d2 = Delivery.objects.create(channel=channel, event="test", payload={"event": "test"})
        assert delivery.attempt(d2.pk) is None
        d2.refresh_from_db()
        assert (d2.status, d2.response_code, d2.attempts) == ("failed", 400, 1)


def test_it_schedules_retries_with_growing_backoff(settings: Any) -> None:
    settings.ALERT_RETRY_BASE_SECONDS, settings.ALERT_MAX_ATTEMPTS = 10, 3
    channel, _ = _webhook(url="http://127.0.0.1:9/nothing-listens")
    d = Delivery.objects.create(channel=channel, event="test", payload={"event": "test"})
    assert delivery.attempt(d.pk) == 10
    assert delivery.attempt(d.pk) == 20
    assert delivery.attempt(d.pk) is None  # the third attempt was the last
    d.refresh_from_db()
    assert d.status == "failed" and d.attempts == 3 and len(d.log) == 3
    assert "could not connect" in d.error


def test_it_lets_an_operator_add_a_webhook_and_shows_its_secret_once(alice: Any) -> None:
    client = _login(alice)
    page = client.post(
        "/fleet/alerts/",
        {
            "action": "channel-create",
            "name": "pager",
            "kind": "webhook",
            "url": "https://hooks.example.com/x",
        },
    )
    assert page.status_code == 200
    channel = Channel.objects.get(name="pager")
    assert channel.secret() in page.content.decode()
    assert channel.secret() not in client.get("/fleet/alerts/").content.decode()
    assert AuditEvent.objects.filter(
        action="alert-channel.create", object_id=str(channel.pk)
    ).exists()


def test_it_refuses_a_bad_channel_and_keeps_nothing(alice: Any) -> None:
    client = _login(alice)
    for form in (
        {"name": "x", "kind": "webhook", "url": "file:///etc/passwd"},
        {"name": "y", "kind": "email", "recipients": "not-an-address"},
        {"name": "", "kind": "webhook", "url": "https://ok.example.com"},
    ):
        page = client.post("/fleet/alerts/", {"action": "channel-create", **form}, follow=True)
        assert "Channel not added" in page.content.decode()
    assert not Channel.objects.exists()


def test_it_forbids_a_viewer_to_change_alerts(bob: Any) -> None:
    client = _login(bob)
    assert client.get("/fleet/alerts/").status_code == 200
    answer = client.post(
        "/fleet/alerts/", {"action": "channel-create", "name": "x", "kind": "email"}
    )
    assert answer.status_code == 403
    assert not Channel.objects.exists()


def test_it_saves_a_rule_threshold_and_audits_it(alice: Any) -> None:
    engine.ensure_rules()
    channel, _ = _webhook()
    rule = Rule.objects.get(kind=RuleKind.DRIFT_ABOVE)
    client = _login(alice)
    client.post(
        "/fleet/alerts/",
        {
            "action": "rule-save",
            "rule": rule.pk,
            "enabled": "on",
            "threshold": "0.1",
            "channels": [channel.pk],
        },
    )
    rule.refresh_from_db()
    assert rule.threshold == 0.1 and list(rule.channels.all()) == [channel]
    event = AuditEvent.objects.get(action="alert-rule.update")
    assert event.detail["threshold"] == 0.1
    client.post("/fleet/alerts/", {"action": "rule-save", "rule": rule.pk, "threshold": "lots"})
    rule.refresh_from_db()
    assert rule.threshold == 0.1  # a bad number changes nothing


def test_it_sends_a_test_message_through_the_queue(
    alice: Any, django_capture_on_commit_callbacks: Any
) -> None:
    channel, _ = _webhook()
    client = _login(alice)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post("/fleet/alerts/", {"action": "channel-test", "channel": channel.pk})
    (d,) = Delivery.objects.filter(channel=channel, event="test")
    assert d.status == "pending" and len(callbacks) == 1  # queued for the worker after commit
    assert json.loads(delivery.body_bytes(d.payload))["event"] == "test"
