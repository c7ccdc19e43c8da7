"""Publishing a model version as a bundle.

`request_publish` (API and page) validates the version and creates the Bundle row with
its release number, then queues `fleet.tasks.publish_bundle`. The task (`run_publish`)
builds the payload ZIP, encrypts it once under a fresh content key (the agent's chunked
AEAD), stores the ciphertext, and in one transaction adds the image target carrying the
bundle record and marks the bundle published with its content key sealed under the
master key. A failure leaves the bundle `failed` with its error and no ciphertext.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from tinyfleet_agent.bundle import (
    BundleRecord,
    CipherParams,
    InvalidRecordError,
    PipelineSpec,
    canonical_json,
    encrypt_bundle,
    generate_content_key,
    image_target_custom,
)
from tuf.api.metadata import TargetFile

from accounts.models import audit
from compression.models import Format, ModelVersion, VersionStatus
from fleet.models import Bundle, BundleStatus
from fleet.models.bundles import new_bundle_id
from fleet.models.keys import KeyRole, Repo
from fleet.security import image_repo
from fleet.security.director import CONTENT_KEY_PURPOSE
from fleet.security.keystore import KeyUnavailableError
from fleet.security.masterkey import seal
from fleet.security.payload import PayloadError, PayloadInfo, build_payload, fetch_golden

log = logging.getLogger(__name__)

RUNTIME: dict[str, str] = {Format.ONNX: "onnxruntime", Format.TFLITE: "litert"}
TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")
MAX_ATTEMPTS = 3
# Lowest onnxruntime release that implements each default-domain opset.
_ORT_FOR_OPSET = {18: "1.14", 19: "1.16", 20: "1.17", 21: "1.18", 22: "1.20", 23: "1.22"}
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_PROVENANCE_BUDGET = 30 * 1024  # under the agent's 32 KiB cap, with room to spare


class PublishError(Exception):
    """The version cannot be published; the message tells the operator why."""


def model_slug(name: str) -> str:
    """The record's model name: what devices key release counters by."""
    return _SLUG.sub("-", name).strip("-._")[:128] or "model"


def check_publishable(version: ModelVersion) -> None:
    """Raises PublishError unless `version` can become a bundle devices accept."""
    if version.status != VersionStatus.READY:
        raise PublishError(f"{version} is not ready (status {version.status})")
    if version.format not in RUNTIME:
        raise PublishError(
            f"{version} is a {version.get_format_display()}; export it to ONNX or TFLite first"
        )
    if not version.golden_key or not version.golden_sha256:
        raise PublishError(
            f"{version} has no golden set, and devices must self-test before switching: "
            "publish a version made by a compression or export job"
        )


def request_publish(
    version: ModelVersion, user: Any, overrides: dict[str, Any] | None = None
) -> tuple[Bundle, bool]:
    """Create the bundle of `version` and queue its publishing task.

    Returns (bundle, created). Publishing a version that already has a live bundle
    returns that bundle with created=False; only failed attempts may be repeated.
    `overrides` come from `publish_overrides`.

    Raises:
        PublishError: as `check_publishable`, or the version already has a live bundle
            with other labels / threshold.
    """
    overrides = overrides or {}
    from fleet.tasks import publish_bundle

    check_publishable(version)
    with transaction.atomic():
        # The image repository lock also serialises release numbers.
        image_repo.lock(Repo.IMAGE)
        existing = Bundle.objects.filter(version=version).exclude(status=BundleStatus.FAILED)
        if found := existing.first():
            if overrides and overrides != found.pipeline_overrides:
                raise PublishError(
                    f"version {version.pk} is already published as {found.pk} with other "
                    "labels / confidence_threshold; publish a new version to change them"
                )
            return found, False
        slug = model_slug(version.model.name)
        last = Bundle.objects.filter(model=slug).aggregate(m=Max("release"))["m"] or 0
        bundle_id = new_bundle_id()
        bundle = Bundle.objects.create(
            id=bundle_id,
            version=version,
            model=slug,
            release=last + 1,
            target_name=f"bundles/{bundle_id}.enc",
            pipeline_overrides=overrides,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        audit(
            user, "bundle.publish", bundle, version=version.pk, release=bundle.release, **overrides
        )
        transaction.on_commit(lambda: publish_bundle.delay(bundle_id))
    return bundle, True


def _min_runtime(fmt: str, info: PayloadInfo) -> str:
    floor = settings.BUNDLE_MIN_RUNTIME[RUNTIME[fmt]]
    opset = info.opset_imports.get("ai.onnx", info.opset_imports.get("", 0))
    needed = _ORT_FOR_OPSET.get(min(opset, max(_ORT_FOR_OPSET)), "0") if opset >= 18 else "0"

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    return max(floor, needed, key=key)


CLASSIFIER_TASKS = ("text-classification", "token-classification")


def inherited_labels(version: ModelVersion) -> list[str]:
    """Class names from the version's pipeline, else from the nearest ancestor whose
    inspection read them from a Hugging Face config.json (`id2label`)."""
    if labels := (version.pipeline or {}).get("labels"):
        return [str(label) for label in labels]
    node: ModelVersion | None = version
    for _ in range(32):  # lineage depth cap: a cycle cannot hang publishing
        if node is None:
            break
        if labels := (node.inspection or {}).get("labels"):
            return [str(label) for label in labels]
        node = node.parent
    return []


def _output_classes(version: ModelVersion) -> int | None:
    """How many classes the first output has (its last dimension), when known."""
    outputs = (version.inspection or {}).get("outputs") or []
    shape = outputs[0].get("shape") if outputs and isinstance(outputs[0], dict) else None
    last = shape[-1] if isinstance(shape, list) and shape else None
    return last if isinstance(last, int) and last > 0 else None


def publish_overrides(
    version: ModelVersion, labels: list[str] | None, confidence_threshold: float | None
) -> dict[str, Any]:
    """Check operator-given labels / threshold for `version`; returns what to store.

    Raises:
        PublishError: not a classifier, a label count that differs from the model's
            outputs, or values devices would refuse.
    """
    if labels is None and confidence_threshold is None:
        return {}
    task = version.model.task
    if task not in CLASSIFIER_TASKS:
        raise PublishError(f"labels and confidence_threshold are for classifiers; {task} is not")
    overrides: dict[str, Any] = {}
    if labels is not None:
        overrides["labels"] = [
            label.strip() if isinstance(label, str) else label for label in labels
        ]
        classes = _output_classes(version)
        if classes is not None and len(labels) != classes:
            raise PublishError(f"{len(labels)} labels given, but the model has {classes} classes")
    if confidence_threshold is not None:
        overrides["confidence_threshold"] = float(confidence_threshold)
    try:  # the device's own rules, so a bundle is never built with values it refuses
        PipelineSpec(
            task=task,
            tokenizer="tokenizer.json",
            max_seq_len=128,
            pooling="none",
            normalize=False,
            labels=tuple(overrides.get("labels") or ()),
            confidence_threshold=overrides.get("confidence_threshold"),
        )
    except InvalidRecordError as exc:
        raise PublishError(str(exc)) from None
    return overrides


def pipeline_spec(
    version: ModelVersion, has_tokenizer: bool, overrides: dict[str, Any] | None = None
) -> PipelineSpec:
    """The record's I/O spec from the model's task, the version's pipeline (labels also
    from its HF config) and the operator's `overrides`.

    Raises:
        PublishError: a text task without tokenizer.json.
        InvalidRecordError: the version's pipeline holds values devices refuse.
    """
    task, p = version.model.task, {**(version.pipeline or {}), **(overrides or {})}
    text = task in TEXT_TASKS
    if text and not has_tokenizer:
        raise PublishError(f"{version} is a {task} model but its artifact has no tokenizer.json")
    embedding = task == "text-embedding"
    threshold = p.get("confidence_threshold")
    return PipelineSpec(
        task=task,
        tokenizer="tokenizer.json" if text else None,
        max_seq_len=int(p.get("max_seq_len") or 128),
        pooling=str(p.get("pooling") or ("mean" if embedding else "none")),
        normalize=bool(p.get("normalize", embedding)),
        labels=tuple(str(label) for label in p.get("labels") or inherited_labels(version)),
        confidence_threshold=None if threshold is None else round(float(threshold), 6),
        # The primary output (compression inspection or the operator); devices read it.
        output=_primary_output(version),
    )


def _primary_output(version: ModelVersion) -> str | None:
    """None when the primary output is the first one: the record then stays as before."""
    primary = version.primary_output
    outputs = (version.inspection or {}).get("outputs") or []
    if not primary or (outputs and outputs[0].get("name") == primary):
        return None
    return primary


def _signable(value: Any, depth: int = 0) -> Any:
    """JSON the image repository can sign: no floats (as strings), bounded depth."""
    if depth > 12:
        return str(value)[:200]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _signable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_signable(v, depth + 1) for v in value]
    return str(value)


def provenance(version: ModelVersion) -> dict[str, Any]:
    """Parent chain, recipe, datasets and measured metrics, trimmed to fit the record."""
    lineage = version.lineage_info or {}
    chain = lineage.get("parent_chain") or [
        {"id": v.pk, "sha256": v.sha256, "recipe": v.recipe or "upload"} for v in version.lineage()
    ]
    full = {
        "version_id": version.pk,
        "version_sha256": version.sha256,
        "format": version.format,
        "recipe": version.recipe or "upload",
        "parent_chain": chain[-20:],
        "datasets": lineage.get("datasets", {}),
        "params": version.params,
        "libraries": lineage.get("libraries", {}),
        "metrics": version.metrics,
    }
    prov = _signable(full)
    # Drop the least essential parts first until the record fits on small devices.
    for key in ("libraries", "params", "metrics", "datasets", "parent_chain"):
        if len(canonical_json(prov)) <= _PROVENANCE_BUDGET:
            break
        prov[key] = "omitted: too large for the signed record"
    return dict(prov)


def build_record(bundle: Bundle, params: CipherParams, info: PayloadInfo) -> BundleRecord:
    version = bundle.version
    return BundleRecord(
        bundle_id=bundle.pk,
        model=bundle.model,
        version=f"v{version.number}",
        release=bundle.release,
        runtime=RUNTIME[version.format],
        min_runtime_version=_min_runtime(version.format, info),
        arch=tuple(dict.fromkeys(version.pipeline.get("arch") or settings.BUNDLE_ARCH)),
        pipeline=pipeline_spec(version, info.has_tokenizer, bundle.pipeline_overrides),
        cipher=params,
        golden_set_sha256=version.golden_sha256,
        provenance=provenance(version),
    )


def signed_target(bundle: Bundle) -> dict[str, Any] | None:
    """The bundle's entry in the current signed image targets, with who signed it."""
    row = image_repo.latest_row(Repo.IMAGE, KeyRole.TARGETS)
    if row is None or not bundle.is_published:
        return None
    md = image_repo.load(row)
    target = md.signed.targets.get(bundle.target_name)
    if target is None:
        return None
    return {
        "targets_version": md.signed.version,
        "targets_expires": md.signed.expires,
        "keyids": sorted(md.signatures),
        "target": {"path": target.path, **target.to_dict()},
    }


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
