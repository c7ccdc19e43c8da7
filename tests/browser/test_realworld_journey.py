"""A third-party export in a real browser: the outputs' roles and the primary output on
the version page, choosing another one, a dataset uploaded and previewed, a job run on
it, re-quantizing refused with what to do instead, and the comparison page. Nowhere a
traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_upload_journey import _login
from tests.compression.realworld_models import (
    POOLED,
    build_four_output_onnx,
    write_tokenizer,
    zip_folder,
)
from tests.conftest import Worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_takes_a_foreign_export_through_the_journey(
    live_server: Any, celery_worker: Worker, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    _login(page, base, "alice")
    folder = tmp_path / "export"
    build_four_output_onnx(folder / "model.onnx", hidden=64)
    write_tokenizer(folder)
    page.goto(f"{base}/models/upload/")
    page.fill("input[name=name]", "st-export")
    page.select_option("select[name=task]", "text-embedding")
    page.set_input_files("#file-input", str(zip_folder(folder, tmp_path / "export.zip")))
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    version_url = page.url
    page.locator("[data-testid=version-status]").filter(has_text="ready").wait_for(timeout=90_000)
    outputs = page.inner_text("[data-testid=outputs]")
    assert "echo" in outputs and "mask" in outputs and "pooled" in outputs
    assert POOLED in page.inner_text("tr.primary")
    assert "recommended" in page.inner_text("[data-testid=recommendation]")

    page.goto(f"{base}/datasets/")
    # Words the tiny tokenizer knows, so the three texts really differ for the model.
    texts = ["the tiny model runs fast", "a small device runs on chips", "the fleet runs edge"]
    dataset = tmp_path / "commute.jsonl"
    dataset.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    page.set_input_files("input[name=file]", str(dataset))
    page.click("text=Upload dataset")
    assert "the fleet runs edge" in page.inner_text("[data-testid=dataset-preview]")

    page.goto(version_url)
    page.select_option("[data-testid=primary-output-select]", "last_hidden_state")
    page.click("text=Use this output")
    assert "last_hidden_state" in page.inner_text("tr.primary")
    page.select_option("select[name=recipe]", "onnx-int8-dynamic")
    page.select_option("[data-testid=eval-dataset]", label="commute (Text (JSONL), 3 rows)")
    page.click("text=Start job")
    page.wait_for_url(f"{base}/jobs/*/")
    page.locator("[data-testid=job-status]").filter(has_text="succeeded").wait_for(timeout=180_000)
    assert "on output last_hidden_state" in page.inner_text("[data-testid=fidelity]")
    compare = page.get_attribute("text=compare variants", "href")

    # Quantizing the int8 result again is refused before anything runs, naming v1.
    page.click("#job-progress a[href^='/versions/']")
    page.select_option("select[name=recipe]", "onnx-int8-dynamic")
    page.click("text=Start job")
    refusal = page.inner_text(".flash.error")
    assert "already quantized" in refusal and "its fp32 original" in refusal

    page.goto(f"{base}{compare}")
    page.wait_for_function("typeof Chart === 'function'", timeout=30_000)
    table = page.inner_text("[data-testid=compare-table]")
    assert "onnx-int8-dynamic" in table and "Traceback" not in page.content()
