"""In the browser: the enroll command on the groups page is shown whole (wrapped, on a
phone-sized screen too) and its Copy button puts exactly that text on the clipboard."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.models import Group
from tests.browser.test_upload_journey import _login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_shows_the_whole_enroll_command_and_copies_it(
    live_server: Any, alice: Any, page: Any
) -> None:
    Group.objects.create(name="lab", selector="site=lab")
    base = live_server.url
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.set_viewport_size({"width": 420, "height": 900})
    _login(page, base, "alice")
    page.goto(f"{base}/groups/")
    page.click("text=Enrollment command")
    box = page.locator("[data-testid=enroll-command]")
    command = box.inner_text()
    assert f"--server {base} --token tfe_" in command and "--root-fingerprint" in command
    # Wrapped, not cut off: nothing overflows the box sideways.
    overflow = box.evaluate("el => el.scrollWidth - el.clientWidth")
    assert overflow <= 0, overflow
    page.click("button[data-copy=enroll-command]")
    page.locator("button[data-copy=enroll-command]", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == command
