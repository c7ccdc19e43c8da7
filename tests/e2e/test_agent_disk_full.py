"""Disk full during an install, on a real size-limited filesystem.

What is real: the live server, the Celery worker that builds and publishes the bundles,
the agent's Updater and SlotStore code, and the filesystem - the device's state
directory lives on a 48 MiB tmpfs mounted for this test (the suite runs as root, as in
CI), so the out-of-space error is the kernel's own ENOSPC. What is arranged: the
"other writer" that fills the disk is this test writing a ballast file at the moment
the staging slot is emptied (the SlotStore hook), or just before the ciphertext download
starts (a wrapper around the client's download), so the ENOSPC lands in the middle of
extracting the payload, or of downloading it. The Updater runs in this process, as in
test_agent_faults, so the moment is exact; serving is checked with the same Predictor
the agent process uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compression.models import ModelVersion
from fleet.models import Bundle, Device
from fleet.security import director
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import _active, _derive, _publish, _text_model_zip, _updater

pytestmark = [pytest.mark.django_db(transaction=True)]

DISK_BYTES = 48 << 20
MARGIN = 1 << 20  # the default 64 MiB margin would need a larger tmpfs; the rule is the same


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """Write a ballast file so that only `leave` bytes stay free."""
    ballast = disk / f"ballast-{len(list(disk.glob('ballast-*')))}"
    size = shutil.disk_usage(disk).free - leave
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return ballast


def _serves(updater: Any, bundle: str) -> None:
    from tinyfleet_agent.predictor import Predictor

    slot = updater.store.active()
    assert slot is not None and slot.meta.bundle == bundle
    predictor = Predictor.from_slot(slot)
    assert len(predictor.predict(["the pump is vibrating"])[0]["embedding"]) > 0


def _last_reason(state: Path) -> str:
    status = json.loads((state / "status.json").read_text())
    assert status["last_attempt"]["result"] == "failed"
    return str(status["last_attempt"]["reason"])


def test_it_refuses_or_survives_a_full_disk_and_installs_once_space_is_freed(
    live_server: Any,
    celery_worker: Worker,
    alice_api: Any,
    small_disk: Path,
    tmp_path: Path,
) -> None:
    from tinyfleet_agent._internal.slots import SlotStore
    from tinyfleet_agent.fleet import enroll

    uploaded = upload(alice_api, _text_model_zip(tmp_path), name="disk-full")
    wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
    parent = uploaded.json()["id"]
    first = _publish(_derive(alice_api, parent, "onnx-int8-dynamic"))
    second = _publish(_derive(alice_api, parent, "onnx-fp16"))
    group = alice_api.post("/api/v1/groups", {"name": "small-disks"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    state = small_disk / "device"
    enroll(state, live_server.url, token, name="tiny-disk")
    device = Device.objects.get()
    updater = _updater(state, live_server.url)
    updater.disk_margin = MARGIN
    director.assign(device, Bundle.objects.get(pk=first))
    assert updater.check_once() == "installed"
    length = Bundle.objects.get(pk=second).ciphertext_size or 0
    director.assign(device, Bundle.objects.get(pk=second))

    # 1. Preflight: less than 2 x bundle + margin free -> refused with the reason, reported.
    ballast = _fill(small_disk, leave=2 * length + MARGIN - 4096)
    assert updater.check_once() == "deferred"
    assert "not enough disk" in _last_reason(state)
    updater.flush_events()
    assert "not enough disk" in Device.objects.get().state["last_error"]["reason"]
    assert not any((state / "downloads").glob(f"{second}*")), "nothing was downloaded"
    _serves(updater, first)
    ballast.unlink()

    # 2. ENOSPC in the middle of writing the staging slot (another writer filled the disk
    # after the preflight passed): the partial slot and the download are removed, the
    # failure is reported, the active model keeps serving.
    filled: list[Path] = []

    def fill_when_extracting(step: str) -> None:
        if step == "prepare:emptied" and not filled:  # once: the writer then stops
            filled.append(_fill(small_disk, leave=length // 3))

    updater.store = SlotStore(state, hook=fill_when_extracting)
    assert updater.check_once() == "deferred"
    assert "disk full while installing" in _last_reason(state)
    staging = state / "slots" / updater.store.staging_name()
    assert list(staging.iterdir()) == []
    assert list((state / "downloads").iterdir()) == []
    _serves(updater, first)
    updater.flush_events()
    assert "disk full" in Device.objects.get().state["last_error"]["reason"]

    # 2b. The same while the ciphertext downloads: the partial download is dropped too
    # (resuming it would need the space that is gone), and nothing is mistaken for a
    # network error.
    download = updater.client.download

    def fill_then_download(*args: Any, **kwargs: Any) -> None:
        filled.append(_fill(small_disk, leave=length // 3))
        download(*args, **kwargs)

    filled[0].unlink()
    filled.clear()
    updater.store = SlotStore(state)
    updater.client.download = fill_then_download
    assert updater.check_once() == "deferred"
    assert "disk full while installing" in _last_reason(state)
    assert list((state / "downloads").iterdir()) == []
    _serves(updater, first)
    updater.client.download = download

    # 3. Space is freed: the very next poll (no 304 hides the desired state) installs,
    # and the first bundle stays on disk as the rollback target.
    filled[0].unlink()
    assert updater.check_once() == "installed"
    _serves(updater, second)
    assert _active(updater) == second
    previous = updater.store.previous()
    assert previous is not None and previous.meta.bundle == first
