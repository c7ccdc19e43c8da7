"""Sending one delivery: a signed JSON POST or an e-mail, with every attempt logged.

Transient failures (no connection, timeout, HTTP 408/425/429/5xx, SMTP errors) are
retried with exponential backoff up to ALERT_MAX_ATTEMPTS; a receiver that refuses the
request (any other 4xx, or a redirect, which is never followed so the signature and
body never travel to another origin) fails the delivery at once.
"""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from fleet.alerts.models import Channel, ChannelKind, Delivery, DeliveryStatus
from fleet.alerts.signing import signed_headers
from fleet.security.masterkey import MasterKeyError

TIMEOUT_S = 10
TRANSIENT_CODES = {408, 425, 429}
MAX_ERROR = 500


@dataclass
class Outcome:
    ok: bool
    transient: bool = False
    code: int | None = None
    error: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx code


_opener = urllib.request.build_opener(_NoRedirect)


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent and signed (compact, keys sorted: stable for receivers)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def post_webhook(channel: Channel, delivery: Delivery) -> Outcome:
    body = body_bytes(delivery.payload)
    try:
        secret = channel.secret()
    except MasterKeyError as exc:
        return Outcome(False, error=str(exc))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tinyfleet-alerts/1",
        "X-Tinyfleet-Event": delivery.event,
        "X-Tinyfleet-Delivery": str(delivery.pk),
        **(signed_headers(secret, body) if secret else {}),
    }
    request = urllib.request.Request(channel.url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            response.read(4096)
            return Outcome(True, code=response.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
        if 300 <= code < 400:
            return Outcome(False, code=code, error=f"HTTP {code}: redirects are not followed")
        transient = code >= 500 or code in TRANSIENT_CODES
        return Outcome(False, transient, code, f"HTTP {code} {exc.reason}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(False, True, error=f"could not connect: {reason}")


def send_email(channel: Channel, delivery: Delivery) -> Outcome:
    alert = delivery.payload.get("alert", {})
    event = delivery.event
    prefix = {"alert.resolved": "[resolved] ", "test": "[test] "}.get(event, "")
    lines = [
        alert.get("message", ""),
        "",
        f"Rule: {alert.get('title')}",
        f"Severity: {alert.get('severity')}",
        f"Opened: {alert.get('opened_at')}",
    ]
    if alert.get("resolved_at"):
        lines.append(f"Resolved: {alert['resolved_at']}")
    lines += ["", f"Details: {alert.get('url')}"]
    try:
        send_mail(
            f"[tinyfleet] {prefix}{alert.get('subject', 'alert')}",
            "\n".join(lines) + "\n",
            settings.DEFAULT_FROM_EMAIL,
            channel.recipient_list(),
            fail_silently=False,
        )
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(False, True, error=f"e-mail not sent: {exc}")
    return Outcome(True)


def backoff_seconds(attempts: int) -> int:
    """Wait before attempt `attempts + 1`: base, 2 x base, 4 x base ... capped at 1 h."""
    base = settings.ALERT_RETRY_BASE_SECONDS
    return int(min(base * 2 ** max(attempts - 1, 0), 3600))


def attempt(delivery_id: int) -> int | None:
    """Make one attempt; returns seconds until the next one, or None when done."""
    with transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update().select_related("channel").get(pk=delivery_id)
        )
        if delivery.status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
            return None  # a redelivered message: already settled
    channel = delivery.channel
    if not channel.enabled:
        outcome = Outcome(False, error="channel disabled")
    elif channel.kind == ChannelKind.WEBHOOK:
        outcome = post_webhook(channel, delivery)
    else:
        outcome = send_email(channel, delivery)
    return _record(delivery, outcome)


def _record(delivery: Delivery, outcome: Outcome) -> int | None:
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.response_code = outcome.code
    delivery.error = outcome.error[:MAX_ERROR]
    delivery.log = [
        *delivery.log,
        {"at": now.isoformat(), "code": outcome.code, "error": outcome.error[:MAX_ERROR]},
    ][-20:]
    retry_in = None
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = (
            DeliveryStatus.DELIVERED,
            now,
            None,
        )
    elif outcome.transient and delivery.attempts < settings.ALERT_MAX_ATTEMPTS:
        retry_in = backoff_seconds(delivery.attempts)
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=retry_in)
    else:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
    delivery.save()
    return retry_in
