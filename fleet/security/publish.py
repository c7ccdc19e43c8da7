"""Publishing a model version as a bundle, the request side (API and pages).

`request_publish` validates the version and creates the Bundle row with its release
number, then queues `fleet.security.tasks.publish_bundle`, whose body is
`fleet.security.publish_worker.run_publish`. The record rules live in
`fleet.security.record`.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Max

from accounts.models import audit
from compression.models import ModelVersion, VersionStatus
from fleet.models import Bundle, BundleStatus
from fleet.models.bundles import new_bundle_id
from fleet.models.keys import KeyRole, Repo
from fleet.security import image_repo
from fleet.security.record import RUNTIME, PublishError, model_slug, publish_overrides
from fleet.security.tasks import publish_bundle

__all__ = [
    "PublishError",
    "check_publishable",
    "publish_overrides",
    "request_publish",
    "signed_target",
]


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
