"""The image repository as devices see it: verified by the agent's own code."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from tinyfleet_agent.bundle import (
    ExpiredMetadataError,
    TrustedState,
    update_root_chain,
    verify_image_metadata,
)

from fleet.models import TufMetadata
from fleet.security import image_repo, rotation
from fleet.tasks import refresh_metadata
from tests.conftest import wait_for
from tests.fleet.publish_helpers import enrolled_state, fetch, image_set, make_device


def test_it_produces_metadata_the_agent_verifies(db: None, device_prefix: str) -> None:
    dev = make_device()
    root = json.loads(fetch(dev, device_prefix, "metadata/image/1.root.json"))["signed"]
    director_root = json.loads(fetch(dev, device_prefix, "metadata/director/1.root.json"))
    # k-of-n root (TINYFLEET_ROOT_KEYS=3, TINYFLEET_ROOT_THRESHOLD=2), consistent snapshots.
    assert root["roles"]["root"]["threshold"] == 2
    assert len(root["roles"]["root"]["keyids"]) == 3
    assert root["consistent_snapshot"] is True
    assert set(director_root["signed"]["roles"]["root"]["keyids"]).isdisjoint(
        root["roles"]["root"]["keyids"]
    )
    state = enrolled_state()
    image = verify_image_metadata(state, *image_set(), timezone.now())
    assert image.targets.targets == {}
    assert image.timestamp.snapshot_meta.length is not None


def test_it_serves_exactly_the_signed_bytes(db: None, device_prefix: str) -> None:
    dev = make_device()
    image_repo.ensure_repositories()
    for role in ("timestamp", "snapshot", "targets"):
        row = image_repo.latest_row("image", role)
        assert row is not None
        assert fetch(dev, device_prefix, f"metadata/image/{role}.json") == bytes(row.data)
    first = image_repo.row_by_version("image", "snapshot", 1)
    assert first is not None
    assert fetch(dev, device_prefix, "metadata/image/1.snapshot.json") == bytes(first.data)
    response = dev.client().get(f"{device_prefix}/metadata/image/timestamp.json")
    again = dev.client().get(
        f"{device_prefix}/metadata/image/timestamp.json", HTTP_IF_NONE_MATCH=response["ETag"]
    )
    assert again.status_code == 304
    for bad in ("2.timestamp.json", "../1.root.json", "mirrors.json", "99.root.json"):
        assert dev.client().get(f"{device_prefix}/metadata/image/{bad}").status_code == 404
    assert dev.client().get(f"{device_prefix}/metadata/director/timestamp.json").status_code == 404
    anonymous = Client().get(f"{device_prefix}/metadata/image/timestamp.json")
    assert anonymous.status_code == 401


def test_it_keeps_every_root_version_for_the_chain(db: None, device_prefix: str) -> None:
    dev = make_device()
    state = enrolled_state()
    for role in ("timestamp", "snapshot", "root"):
        rotation.rotate("image", role)
    chain = [fetch(dev, device_prefix, f"metadata/image/{v}.root.json") for v in (2, 3, 4)]
    assert update_root_chain(state, chain).version == 4
    verify_image_metadata(state, *image_set(), timezone.now())
    assert TufMetadata.objects.filter(repo="image", role="root").count() == 4


def test_it_refreshes_only_what_is_due(db: None) -> None:
    image_repo.ensure_repositories()
    now = timezone.now()
    assert image_repo.refresh_image(now) == []
    assert image_repo.refresh_image(now + timedelta(hours=1, seconds=5)) == ["timestamp"]
    # Snapshot lives 7 days and is re-signed with half of that left.
    assert image_repo.refresh_image(now + timedelta(days=4)) == ["snapshot", "timestamp"]
    assert image_repo.refresh_image(now + timedelta(days=46)) == [
        "snapshot",
        "targets",
        "timestamp",
    ]


def test_it_prunes_old_versions_but_keeps_recent_ones(db: None) -> None:
    image_repo.ensure_repositories()
    now = timezone.now()
    for hours in range(1, 8):
        image_repo.refresh_image(now + timedelta(hours=hours, seconds=5))
    versions = list(
        TufMetadata.objects.filter(repo="image", role="timestamp").values_list("version", flat=True)
    )
    assert sorted(versions) == [5, 6, 7, 8]


def test_freeze_expired_timestamp_is_refreshed_by_the_beat_task(
    celery_worker: Any, settings: Any
) -> None:
    image_repo.ensure_repositories()
    state = enrolled_state()
    # A timestamp signed two days ago: expired (1 day lifetime). Devices freeze.
    with transaction.atomic():
        image_repo.lock("image")
        image_repo.resign_image({"timestamp"}, timezone.now() - timedelta(days=2))
    stale = image_repo.latest_row("image", "timestamp")
    assert stale is not None
    with pytest.raises(ExpiredMetadataError):
        verify_image_metadata(state, *image_set(), timezone.now())
    refresh_metadata.delay()
    fresh = wait_for(
        lambda: TufMetadata.objects.filter(
            repo="image", role="timestamp", version__gt=stale.version
        ).first()
    )
    assert fresh.expires > timezone.now() + timedelta(hours=23)
    verify_image_metadata(state, *image_set(), timezone.now())


def test_root_keys_offline_do_not_break_the_refresh(db: None, tmp_path: Any) -> None:
    from fleet.security import keystore

    image_repo.ensure_repositories()
    keystore.export_root_keys(tmp_path / "root.json", ["image"])
    assert image_repo.refresh_root("image", timezone.now() + timedelta(days=300)) is False
    assert image_repo.refresh_root("director", timezone.now() + timedelta(days=300)) is True
    state = TrustedState.bootstrap(*(root_v1(repo) for repo in ("image", "director")))
    renewed = bytes(image_repo.current_root_row("director").data)
    assert update_root_chain(state, [renewed], repository="director").version == 2


def root_v1(repo: str) -> bytes:
    row = image_repo.row_by_version(repo, "root", 1)
    assert row is not None
    return bytes(row.data)
