"""Shared by the security tests: a second group's running rollout to attack, and tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.models import Group, Rollout
from fleet.rollouts import engine as rollouts
from tests.fleet.publish_helpers import make_device, make_version, onnx_files, publish_now


@pytest.fixture
def group_b_rollout(tmp_path: Path, alice: Any) -> Rollout:
    """Group B selects site=b; its rollout of a bundle runs on one honest device."""
    group_b = Group.objects.create(name="b", selector="site=b")
    honest = make_device("honest-b")
    honest.device.labels = {"site": "b"}
    honest.device.save()
    bundle = publish_now(make_version(onnx_files(tmp_path), name="b model"))
    return rollouts.create(
        user=alice, bundle=bundle, group=group_b, waves=[100], gates={}, soak_seconds=0
    )


def token_for(api: Any, group: int, labels: dict[str, str] | None = None) -> str:
    body = {"group": group, "labels": labels or {}}
    response = api.post("/api/v1/enrollment-tokens", body)
    assert response.status_code == 201, response.content
    raw: str = response.json()["token"]
    return raw
