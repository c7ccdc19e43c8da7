"""Unchanged desired-state polls are answered by fleet.devices.state.DeviceStateFastPath with one
query; anything else reaches the full view (real PostgreSQL, Django's real middleware)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from fleet.models import Device, Group
from fleet.security import director
from tests.fleet.publish_helpers import TestDevice, make_device
from tests.fleet.rollout_helpers import _bundle

STATE = "/api/device/v1/state"


@pytest.fixture
def fleet_of_four(db: None) -> tuple[Group, list[TestDevice]]:
    group = Group.objects.create(name="plant-3", selector="site=plant-3")
    return group, [make_device(f"pi-{i}") for i in range(4)]


def _first_answer(device: TestDevice) -> tuple[Client, str]:
    client = device.client()
    first = client.get(STATE)
    assert first.status_code == 200
    return client, first["ETag"]


def test_it_answers_an_unchanged_poll_with_one_query(
    fleet_of_four: tuple[Group, list[TestDevice]], django_assert_num_queries: Any
) -> None:
    client, etag = _first_answer(fleet_of_four[1][0])
    with django_assert_num_queries(1):
        again = client.get(STATE, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again["ETag"] == etag and not again.content
    assert again["Cache-Control"] == "no-cache"


def test_it_sends_the_new_state_when_the_assignment_changed(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path
) -> None:
    device = fleet_of_four[1][0]
    client, etag = _first_answer(device)
    bundle = _bundle(tmp_path)
    director.assign(device.device, bundle)
    changed = client.get(STATE, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["desired"]["bundle"] == bundle.pk
    # ...and the fast path agrees with the view on the new ETag.
    assert client.get(STATE, HTTP_IF_NONE_MATCH=changed["ETag"]).status_code == 304


def test_it_refuses_a_revoked_device_even_with_a_current_etag(
    fleet_of_four: tuple[Group, list[TestDevice]],
) -> None:
    device = fleet_of_four[1][0]
    client, etag = _first_answer(device)
    Device.objects.filter(pk=device.device.pk).update(revoked_at=timezone.now())
    refused = client.get(STATE, HTTP_IF_NONE_MATCH=etag)
    assert refused.status_code == 401 and "error" in refused.json()


def test_it_refreshes_last_seen_when_due(
    fleet_of_four: tuple[Group, list[TestDevice]], django_assert_num_queries: Any
) -> None:
    device = fleet_of_four[1][0]
    client, etag = _first_answer(device)
    stale = timezone.now() - timedelta(hours=1)
    Device.objects.filter(pk=device.device.pk).update(last_seen_at=stale)
    again = client.get(STATE, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    fresh = Device.objects.get(pk=device.device.pk).last_seen_at
    with django_assert_num_queries(1):  # fresh now: a read only
        assert client.get(STATE, HTTP_IF_NONE_MATCH=etag).status_code == 304
    assert Device.objects.get(pk=device.device.pk).last_seen_at == fresh
    device.device.refresh_from_db()
    assert device.device.last_seen_at is not None and device.device.last_seen_at > stale


def test_it_passes_bad_credentials_and_other_schemes_to_the_view(
    fleet_of_four: tuple[Group, list[TestDevice]],
) -> None:
    _, etag = _first_answer(fleet_of_four[1][0])
    for auth in ("Bearer tfd_not-a-credential", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 300):
        answer = Client(HTTP_AUTHORIZATION=auth).get(STATE, HTTP_IF_NONE_MATCH=etag)
        assert answer.status_code == 401, auth
