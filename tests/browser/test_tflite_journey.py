"""An operator converts a Hugging Face upload to TFLite in a real browser (Debian's
Chromium through Playwright), with a real Celery worker running litert-torch, and finds
the TFLite variant's measured numbers on the comparison page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compression.models import ModelVersion
from tests.conftest import Worker
from tests.fixtures.tiny_models import build_tiny_hf_dir, zip_dir

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_converts_to_tflite_and_compares_it(
    live_server: Any, celery_worker: Worker, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    page.goto(f"{base}/models/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw-alice")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/models/")
    page.goto(f"{base}/models/upload/")
    page.fill("input[name=name]", "hf-to-tflite")
    page.select_option("select[name=task]", "text-embedding")
    archive = zip_dir(build_tiny_hf_dir(tmp_path / "hf"), tmp_path / "hf.zip")
    page.set_input_files("#file-input", str(archive))
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    page.select_option("select[name=recipe]", "tflite", timeout=60_000)
    # The form starts from the recipe's defaults; this model has 64 positions.
    params = page.locator("input[name=params]")
    assert json.loads(params.input_value()) == {"variant": "dynamic-int8", "seq_len": 128}
    params.fill('{"variant": "dynamic-int8", "seq_len": 32}')
    page.click("text=Start job")
    page.wait_for_url(f"{base}/jobs/*/")
    page.locator("[data-testid=job-status]").filter(has_text="succeeded").wait_for(timeout=240_000)
    assert "cosine_mean" in page.inner_text("#job-progress")
    page.click("text=compare variants")
    table = page.locator("[data-testid=compare-table]")
    row = table.locator("tr", has_text="tflite")
    child = ModelVersion.objects.get(recipe="tflite")
    latency = child.metrics["benchmark"]["latency_p50_ms"]
    assert f"{latency:.2f} ms (seq 32)" in row.inner_text()  # its fixed length, not 64
    assert f"{child.metrics['fidelity']['cosine_mean']:.4f}" in row.inner_text()
