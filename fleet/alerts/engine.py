"""Open and resolve alerts from the rules' findings, and queue their deliveries.

Evaluation is idempotent: the partial unique constraint on open alerts (rule, key)
means two evaluations racing each other open one alert and send one message.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet.alerts import rules
from fleet.alerts.models import THRESHOLDS, Alert, Channel, Delivery, Rule, RuleKind

log = logging.getLogger(__name__)

# Rules every new installation starts with; health thresholds are generous defaults an
# operator tunes on the alerts page.
DEFAULT_KINDS = [kind for kind in RuleKind.values]


def ensure_rules() -> list[Rule]:
    """One rule per kind (created enabled, with the default threshold)."""
    rules = list(Rule.objects.all())
    missing = set(DEFAULT_KINDS) - {r.kind for r in rules}
    if not missing:
        return rules
    for kind in DEFAULT_KINDS:
        if kind in missing:
            spec = THRESHOLDS.get(kind)
            # get_or_create: two processes creating the defaults at once both succeed.
            Rule.objects.get_or_create(kind=kind, defaults={"threshold": spec[1] if spec else None})
    return list(Rule.objects.all())


def _absolute(link: str) -> str:
    return settings.SITE_URL.rstrip("/") + link if link else settings.SITE_URL


def payload(alert: Alert, event: str) -> dict[str, Any]:
    """The JSON a webhook receives (and the e-mail is written from)."""
    return {
        "event": event,
        "alert": {
            "id": alert.pk,
            "rule": alert.rule.kind,
            "title": alert.rule.get_kind_display(),
            "severity": alert.severity,
            "key": alert.key,
            "subject": alert.subject,
            "message": alert.message,
            "opened_at": alert.opened_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "url": _absolute(alert.link),
            "detail": alert.detail,
        },
        "server": settings.SITE_URL,
    }


def _queue(delivery: Delivery) -> None:
    from fleet.alerts.tasks import deliver

    def send() -> None:
        try:
            deliver.apply_async((delivery.pk,), retry=False)
        except Exception as exc:  # broker down: the beat sweep re-queues pending ones
            log.warning("could not queue alert delivery %s: %s", delivery.pk, exc)

    transaction.on_commit(send)


def notify(alert: Alert, event: str) -> list[Delivery]:
    """A delivery per target channel of the alert's rule, queued after commit."""
    made = []
    for channel in alert.rule.targets():
        delivery = Delivery.objects.create(
            channel=channel, alert=alert, event=event, payload=payload(alert, event)
        )
        _queue(delivery)
        made.append(delivery)
    return made


def send_test(channel: Channel) -> Delivery:
    """A test message to one channel, through the same task as real alerts."""
    body = {
        "event": "test",
        "alert": {
            "id": None,
            "rule": "test",
            "title": "Test message",
            "severity": "info",
            "key": f"test:{channel.pk}",
            "subject": f"tinyfleet test message for {channel.name}",
            "message": "If you can read this, alerts reach this channel.",
            "opened_at": timezone.now().isoformat(),
            "resolved_at": None,
            "url": _absolute("/fleet/alerts/"),
            "detail": {},
        },
        "server": settings.SITE_URL,
    }
    with transaction.atomic():
        delivery = Delivery.objects.create(channel=channel, event="test", payload=body)
        _queue(delivery)
    return delivery


def _open(rule: Rule, finding: rules.Finding, now: datetime) -> Alert | None:
    try:
        with transaction.atomic():
            return Alert.objects.create(
                rule=rule,
                key=finding.key[:200],
                subject=finding.subject[:200],
                message=finding.message,
                severity=rule.severity,
                detail=finding.detail,
                link=finding.link[:300],
                opened_at=now,
            )
    except IntegrityError:
        return None  # another evaluation opened it first


def evaluate_rule(rule: Rule, now: datetime) -> tuple[int, int]:
    """(opened, resolved) for one rule."""
    found = rules.findings(rule, now) if rule.enabled else []
    opened = resolved = 0
    with transaction.atomic():
        current = {a.key: a for a in Alert.objects.filter(rule=rule, resolved_at__isnull=True)}
        keys = {f.key[:200] for f in found}
        for finding in found:
            if finding.key[:200] in current:
                continue
            alert = _open(rule, finding, now)
            if alert is not None:
                opened += 1
                notify(alert, "alert.opened")
        for key, alert in current.items():
            if key in keys:
                continue
            # Only this evaluation resolves it (the filter makes the update conditional).
            if Alert.objects.filter(pk=alert.pk, resolved_at__isnull=True).update(resolved_at=now):
                alert.resolved_at = now
                resolved += 1
                if rule.enabled:
                    notify(alert, "alert.resolved")
    return opened, resolved


def evaluate(now: datetime | None = None) -> dict[str, int]:
    """Evaluate every rule; one failing never stops the others."""
    now = now or timezone.now()
    totals = {"opened": 0, "resolved": 0, "errors": 0}
    for rule in ensure_rules():
        try:
            opened, resolved = evaluate_rule(rule, now)
        except Exception:
            log.exception("evaluating alert rule %s failed", rule.kind)
            totals["errors"] += 1
            continue
        totals["opened"] += opened
        totals["resolved"] += resolved
    return totals
