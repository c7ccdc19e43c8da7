"""Fixtures for the bundle format and verification tests (no Django)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tuf_fixtures import Bundle, World


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Fresh image repository, director, devices and trusted device state."""
    return World.create(tmp_path)


@pytest.fixture
def bundle(world: World) -> Bundle:
    """Release 1 of a model, encrypted and published in the image repository."""
    return world.publish_bundle(release=1)
