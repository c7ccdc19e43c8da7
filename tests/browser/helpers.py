"""Browser test helpers."""

from __future__ import annotations

from typing import Any


def _login(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/models/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"pw-{username}")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/models/")
