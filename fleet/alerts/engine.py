"""Open and resolve alerts from the rules' findings, and queue their deliveries.

Evaluation is idempotent: the partial unique constraint on open alerts (rule, key)
means two evaluations racing each other open one alert and send one message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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


def notify(alert: Alert, event: str) -> list[Delivery]:
    """A pending delivery per target channel of the alert's rule. The caller (a task, or
    the page) queues them: this module is the worker side and never imports tasks."""
    return [
        Delivery.objects.create(
            channel=channel, alert=alert, event=event, payload=payload(alert, event)
        )
        for channel in alert.rule.targets()
    ]


def test_delivery(channel: Channel) -> Delivery:
    """A pending test message to one channel (queued by the page, like real alerts)."""
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
    return Delivery.objects.create(channel=channel, event="test", payload=body)


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


@dataclass
class Evaluation:
    opened: int = 0
    resolved: int = 0
    errors: int = 0
    deliveries: list[int] = field(default_factory=list)  # pending, for the caller to queue

    def counts(self) -> dict[str, int]:
        return {"opened": self.opened, "resolved": self.resolved, "errors": self.errors}


def evaluate_rule(rule: Rule, now: datetime, result: Evaluation) -> None:
    """Open and resolve one rule's alerts (in one transaction), adding to `result`."""
    found = rules.findings(rule, now) if rule.enabled else []
    with transaction.atomic():
        current = {a.key: a for a in Alert.objects.filter(rule=rule, resolved_at__isnull=True)}
        keys = {f.key[:200] for f in found}
        for finding in found:
            if finding.key[:200] in current:
                continue
            alert = _open(rule, finding, now)
            if alert is not None:
                result.opened += 1
                result.deliveries += [d.pk for d in notify(alert, "alert.opened")]
        for key, alert in current.items():
            if key in keys:
                continue
            # Only this evaluation resolves it (the filter makes the update conditional).
            if Alert.objects.filter(pk=alert.pk, resolved_at__isnull=True).update(resolved_at=now):
                alert.resolved_at = now
                result.resolved += 1
                if rule.enabled:
                    result.deliveries += [d.pk for d in notify(alert, "alert.resolved")]


def evaluate(now: datetime | None = None) -> Evaluation:
    """Evaluate every rule; one failing never stops the others. The deliveries it made
    are committed when this returns; the caller queues them."""
    now = now or timezone.now()
    result = Evaluation()
    for rule in ensure_rules():
        try:
            evaluate_rule(rule, now, result)
        except Exception:
            log.exception("evaluating alert rule %s failed", rule.kind)
            result.errors += 1
    return result
