"""Publishing a bundle, the worker side (`fleet.security.tasks.publish_bundle` runs it).

It builds the payload ZIP, encrypts it once under a fresh content key (the agent's chunked
AEAD), stores the ciphertext, and in one transaction adds the image target carrying the
bundle record and marks the bundle published with its content key sealed under the
master key. A failure leaves the bundle `failed` with its error and no ciphertext.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from tinyfleet_agent.protocol import (
    BundleRecord,
    InvalidRecordError,
    encrypt_bundle,
    generate_content_key,
    image_target_custom,
)
from tuf.api.metadata import TargetFile

from fleet.models import Bundle, BundleStatus
from fleet.security import image_repo
from fleet.security.director import CONTENT_KEY_PURPOSE
from fleet.security.keystore import KeyUnavailableError
from fleet.security.masterkey import seal
from fleet.security.payload import PayloadError, build_payload, fetch_golden
from fleet.security.record import PublishError, build_record

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def _claim(bundle_id: str) -> Bundle | None:
    with transaction.atomic():
        bundle = Bundle.objects.select_for_update().filter(pk=bundle_id).first()
        if bundle is None or bundle.status != BundleStatus.PUBLISHING:
            return None
        if bundle.attempts >= MAX_ATTEMPTS:
            _fail(bundle, "gave up after repeated worker crashes")
            return None
        bundle.attempts += 1
        bundle.save(update_fields=["attempts"])
        attempt = bundle.attempts
    claimed = Bundle.objects.select_related("version__model").get(pk=bundle_id)
    claimed.attempts = attempt  # ours, even if another run has claimed since
    return claimed


def _fail(bundle: Bundle, message: str) -> None:
    if bundle.ciphertext_key and default_storage.exists(bundle.ciphertext_key):
        published = Bundle.objects.filter(
            pk=bundle.pk, status=BundleStatus.PUBLISHED, ciphertext_key=bundle.ciphertext_key
        ).exists()
        if not published:
            default_storage.delete(bundle.ciphertext_key)
    Bundle.objects.filter(pk=bundle.pk, status=BundleStatus.PUBLISHING).update(
        status=BundleStatus.FAILED, error=message[:4000], ciphertext_key=""
    )


def _store_ciphertext(key: str, path: Path) -> None:
    # A redelivered task re-encrypts under a new key: replace what a crash left behind.
    if default_storage.exists(key):
        default_storage.delete(key)
    with path.open("rb") as f:
        saved = default_storage.save(key, File(f, name=key))
    if saved != key:
        raise OSError(f"storage saved the ciphertext as {saved!r} instead of {key!r}")


def _encrypt(bundle: Bundle, work: Path) -> tuple[bytes, BundleRecord]:
    version = bundle.version
    golden, payload, encrypted = work / "golden.npz", work / "payload.zip", work / "payload.enc"
    fetch_golden(version, golden)
    info = build_payload(version, golden, payload)
    key = generate_content_key()
    params = encrypt_bundle(
        payload,
        encrypted,
        key,
        cipher=settings.BUNDLE_CIPHER,
        chunk_size=settings.BUNDLE_CHUNK_SIZE,
    )
    record = build_record(bundle, params, info)
    # One storage key per attempt: a late duplicate run (redelivery while the first is
    # still going) must never overwrite the bytes another run already signed.
    bundle.ciphertext_key = f"bundles/{bundle.pk}.{bundle.attempts}.enc"
    _store_ciphertext(bundle.ciphertext_key, encrypted)
    return key, record


def _publish(bundle: Bundle, key: bytes, record: BundleRecord) -> bool:
    """Sign and mark published, unless another run of the same bundle won the race."""
    cipher = record.cipher
    target = TargetFile(
        cipher.ciphertext_length,
        {"sha256": cipher.ciphertext_sha256},
        bundle.target_name,
        {"custom": image_target_custom(record)},
    )
    with transaction.atomic():
        current = Bundle.objects.select_for_update().get(pk=bundle.pk)
        if current.status != BundleStatus.PUBLISHING:
            default_storage.delete(bundle.ciphertext_key)
            return False
        image_repo.publish_target(bundle.target_name, target)
        Bundle.objects.filter(pk=bundle.pk).update(
            ciphertext_key=bundle.ciphertext_key,
            record=record.to_dict(),
            content_key_sealed=seal(key, purpose=CONTENT_KEY_PURPOSE, bound_to=bundle.pk),
            plaintext_size=cipher.plaintext_length,
            ciphertext_size=cipher.ciphertext_length,
            ciphertext_sha256=cipher.ciphertext_sha256,
            status=BundleStatus.PUBLISHED,
            error="",
            published_at=timezone.now(),
        )
    for attempt in range(1, bundle.attempts):  # what crashed attempts left behind
        stale = f"bundles/{bundle.pk}.{attempt}.enc"
        if stale != bundle.ciphertext_key and default_storage.exists(stale):
            default_storage.delete(stale)
    return True


def run_publish(bundle_id: str) -> str:
    """The publishing task's body; returns the bundle's final status."""
    bundle = _claim(bundle_id)
    if bundle is None:
        return "skipped"
    try:
        with tempfile.TemporaryDirectory(dir=settings.TMP_DIR) as tmp:
            key, record = _encrypt(bundle, Path(tmp))
        if not _publish(bundle, key, record):
            return "skipped"
    except (PublishError, PayloadError, InvalidRecordError, KeyUnavailableError) as exc:
        _fail(bundle, str(exc))
        return BundleStatus.FAILED
    except Exception as exc:
        log.exception("publishing bundle %s crashed", bundle_id)
        _fail(bundle, f"{type(exc).__name__}: {exc}")
        return BundleStatus.FAILED
    log.info("published bundle %s (%s release %s)", bundle.pk, bundle.model, bundle.release)
    return BundleStatus.PUBLISHED
