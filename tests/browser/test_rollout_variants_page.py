"""In the browser: pick a second variant in the rollout form, see which devices each
variant will serve before starting (htmx preview), then start and see per-variant
progress and the devices no variant fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import _login
from tests.fleet.variant_helpers import mixed_group, onnx_bundle, tflite_bundle

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_previews_and_starts_a_rollout_with_two_variants(
    live_server: Any, alice: Any, page: Any, tmp_path: Path
) -> None:
    onnx, tflite = onnx_bundle(tmp_path), tflite_bundle(tmp_path)
    group, _ = mixed_group({"onnx": 2, "litert": 1, "armv7": 1})
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/rollouts/")
    page.select_option("select[name=group]", str(group.pk))
    page.select_option("select[name=bundle]", onnx.pk)
    page.select_option("select[name=variants]", [tflite.pk])  # each change: htmx previews
    preview = page.locator("[data-testid=rollout-preview]")
    preview.filter(has_text=onnx.pk).filter(has_text=tflite.pk).wait_for()
    rows = preview.locator("tbody tr").all_inner_texts()
    assert [r.split("\t")[-1] for r in rows] == ["2", "1", "1"], rows
    assert "armv7-0" in preview.inner_text()
    page.fill("input[name=waves]", "100")
    page.click("text=Start rollout")
    page.wait_for_url(f"{base}/rollouts/*/")
    variants = page.locator("[data-testid=rollout-variants]").inner_text()
    assert onnx.pk in variants and tflite.pk in variants
    assert (
        "the device is armv7l" in page.locator("[data-testid=no-compatible-variant]").inner_text()
    )
    page.screenshot(path=str(tmp_path / "variants.png"), full_page=True)
