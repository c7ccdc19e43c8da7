"""Alerts reach people: a canary fails, the rollout rolls back, and a real Celery worker
process evaluates the rules and delivers a signed webhook (retried after a 503) to a
real HTTP receiver, and an e-mail to a real SMTP receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from fleet.alerts import signing
from fleet.alerts.models import Channel, Delivery
from fleet.models import DeviceEvent, Group, Rollout
from fleet.rollout_tasks import evaluate_rollouts
from fleet.rollouts import engine as rollouts
from fleet.security import director
from tests.conftest import Worker, start_worker, stop_worker, wait_for
from tests.fleet.alert_helpers import SmtpReceiver, WebhookReceiver, smtp_receiver, webhook_receiver
from tests.fleet.publish_helpers import make_device, make_version, onnx_files, publish_now


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, SmtpReceiver]]:
    # The first POST is answered 503: the worker must retry after its backoff.
    with webhook_receiver([503]) as hook, smtp_receiver() as smtp:
        yield hook, smtp


@pytest.fixture
def alert_worker(
    transactional_db: None, tmp_path: Path, receivers: tuple[WebhookReceiver, SmtpReceiver]
) -> Iterator[Worker]:
    _, smtp = receivers
    worker = start_worker(
        tmp_path,
        {
            "TINYFLEET_ALERT_RETRY_BASE_SECONDS": "1",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp.port),
        },
    )
    try:
        yield worker
    finally:
        stop_worker(worker)


def test_it_delivers_a_signed_webhook_and_an_email_when_a_canary_fails(
    alert_worker: Worker,
    receivers: tuple[WebhookReceiver, SmtpReceiver],
    tmp_path: Path,
    alice: Any,
) -> None:
    hook, smtp = receivers
    channel = Channel.objects.create(name="ops-hook", kind="webhook", url=hook.url)
    secret = channel.new_secret()
    Channel.objects.create(name="ops-mail", kind="email", recipients="oncall@example.com")

    group = Group.objects.create(name="plant-3", selector="site=plant-3")
    devices = [make_device(f"pi-{i}") for i in range(4)]
    for d in devices:
        d.device.labels = {"site": "plant-3"}
        d.device.save()
    for sub in ("old", "new"):
        (tmp_path / sub).mkdir()
    old = publish_now(make_version(onnx_files(tmp_path / "old")))
    for d in devices:
        director.assign(d.device, old)
    new = publish_now(make_version(onnx_files(tmp_path / "new")))
    rollout = rollouts.create(
        user=alice, bundle=new, group=group, waves=[25, 100], gates={}, soak_seconds=0
    )
    (canary,) = [d for d in devices if director.current_assignment(d.device).bundle_id == new.pk]
    DeviceEvent.objects.create(
        device=canary.device,
        bundle=new.pk,
        state="failed",
        reason="golden self-test failed: agreement 0.07 < 0.95",
    )

    # The worker evaluates the gates, rolls back, and the rollback queues the alerts.
    evaluate_rollouts.delay()
    wait_for(lambda: Rollout.objects.get(pk=rollout.pk).status == "rolled_back", timeout=60)

    def delivered() -> list[Delivery]:
        rows = list(Delivery.objects.filter(alert__rule__kind="rollout_rolled_back"))
        return rows if rows and all(d.status == "delivered" for d in rows) else []

    sent = wait_for(delivered, timeout=90, interval=0.5)
    webhook = next(d for d in sent if d.channel == channel)
    assert webhook.attempts == 2, alert_worker.log()[-3000:]  # 503, then 200
    assert [entry["code"] for entry in webhook.log] == [503, 200]

    posts = [r for r in hook.requests if r.headers.get("X-Tinyfleet-Delivery") == str(webhook.pk)]
    assert len(posts) == 2
    last = posts[-1]
    signing.verify(
        secret,
        last.body,
        last.headers["X-Tinyfleet-Timestamp"],
        last.headers["X-Tinyfleet-Signature"],
    )
    body = json.loads(last.body)
    assert body["event"] == "alert.opened"
    assert body["alert"]["rule"] == "rollout_rolled_back"
    assert body["alert"]["detail"]["rollout"] == rollout.pk
    assert "install_failure_rate" in body["alert"]["message"]

    mails = [message_from_bytes(m) for m in smtp.messages]
    subjects = [str(m["Subject"]) for m in mails]
    assert any(f"Rollout {rollout.pk}" in s and "rolled back" in s for s in subjects), subjects
    assert all(m["To"] == "oncall@example.com" for m in mails)
