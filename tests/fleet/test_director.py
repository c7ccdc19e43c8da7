"""The director: per-device assignments the agent accepts, regenerated only when needed."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from tinyfleet_agent.bundle import WrongDeviceError, verify_director_targets
from tinyfleet_agent.bundle import director_target_custom as agent_custom

from fleet.models import Assignment, Bundle, TufMetadata
from fleet.security import director, image_repo, rotation
from fleet.security.director import AssignmentError, NotAssignedError
from fleet.security.publish import request_publish
from tests.fleet.publish_helpers import (
    device_resolves,
    enrolled_state,
    fetch,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)


@pytest.fixture
def bundle(db: None, tmp_path: Path) -> Bundle:
    return publish_now(make_version(onnx_files(tmp_path)))


def test_it_names_the_image_target_with_identical_fields(
    bundle: Bundle, device_prefix: str
) -> None:
    dev = make_device()
    director.assign(dev.device, bundle)
    assignment = device_resolves(dev, device_prefix, enrolled_state(), timezone.now())
    assert assignment.bundle_id == bundle.pk
    assert assignment.device_id == dev.id and len(assignment.wrapped_key) == 80
    signed = json.loads(fetch(dev, device_prefix, "metadata/director/targets.json"))["signed"]
    (target,) = signed["targets"].values()
    record = assignment.record
    assert target["custom"] == agent_custom(
        record, device_id=dev.id, wrapped_key=assignment.wrapped_key
    )


def test_it_regenerates_only_when_the_assignment_changes_or_nears_expiry(
    bundle: Bundle, tmp_path: Path
) -> None:
    dev = make_device()
    director.assign(dev.device, bundle)
    first = director.director_targets_bytes(dev.device)
    assert director.director_targets_bytes(dev.device) == first
    assert director.assign(dev.device, bundle).bundle_id == bundle.pk
    assert director.director_targets_bytes(dev.device) == first
    second_bundle = publish_now(make_version(onnx_files(tmp_path)))
    director.assign(dev.device, second_bundle)
    second = director.director_targets_bytes(dev.device)
    assert json.loads(second)["signed"]["version"] == 2
    assert director.refresh_director(timezone.now()) == 0
    assert director.refresh_director(timezone.now() + timedelta(days=4)) == 1
    assert json.loads(director.director_targets_bytes(dev.device))["signed"]["version"] == 3


def test_unassigned_device_gets_no_director_metadata(bundle: Bundle, device_prefix: str) -> None:
    dev = make_device()
    with pytest.raises(NotAssignedError):
        director.director_targets_bytes(dev.device)
    fetch(dev, device_prefix, "metadata/director/targets.json", status=404)
    director.assign(dev.device, bundle)
    assert director.unassign(dev.device) is True
    assert director.unassign(dev.device) is False
    fetch(dev, device_prefix, "metadata/director/targets.json", status=404)
    assert Assignment.objects.get(device=dev.device).ended_at is not None


def test_revoked_device_gets_no_wraps(bundle: Bundle) -> None:
    dev = make_device()
    director.assign(dev.device, bundle)
    dev.device.revoked_at = timezone.now()
    dev.device.save()
    with pytest.raises(AssignmentError, match="revoked"):
        director.assign(dev.device, bundle)
    with pytest.raises(NotAssignedError):
        director.director_targets_bytes(dev.device)
    assert director.refresh_director(timezone.now() + timedelta(days=6)) == 0


def test_it_refuses_a_bundle_that_is_not_published(db: None, tmp_path: Path) -> None:
    pending, _ = request_publish(make_version(onnx_files(tmp_path)), None)
    with pytest.raises(AssignmentError, match="not published"):
        director.assign(make_device().device, pending)


def test_wrong_device_metadata_names_its_own_device(bundle: Bundle) -> None:
    alice, bob = make_device("alice"), make_device("bob")
    director.assign(bob.device, bundle)
    state = enrolled_state()
    with pytest.raises(WrongDeviceError):
        verify_director_targets(
            state, director.director_targets_bytes(bob.device), alice.id, timezone.now()
        )


def test_director_targets_key_rotation_resigns_every_device(bundle: Bundle) -> None:
    devices = [make_device(f"d{i}") for i in range(3)]
    for dev in devices:
        director.assign(dev.device, bundle)
    state = enrolled_state()
    rotation.rotate("director", "targets")
    chain = [bytes(image_repo.current_root_row("director").data)]
    from tinyfleet_agent.bundle import update_root_chain

    update_root_chain(state, chain, repository="director")
    for dev in devices:
        data = director.director_targets_bytes(dev.device)
        assert json.loads(data)["signed"]["version"] == 2
        verify_director_targets(state, data, dev.id, timezone.now())
        state.director_targets_version = 0  # one state, several devices
    assert TufMetadata.objects.filter(repo="director", role="targets").count() == 6
