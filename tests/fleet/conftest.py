"""Fixtures shared by the fleet tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def device_prefix() -> str:
    """Where the device API (fleet.api.device_api) mounts fleet.api.device_security_api."""
    return "/api/device/v1"
