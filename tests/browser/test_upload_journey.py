"""The newcomer's journey in a real browser: log in, drop a model on the upload page,
watch the progress bar, and see the inspection appear without reloading."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import _login
from tests.conftest import Worker
from tests.fixtures.tiny_models import build_tiny_bert_onnx

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_uploads_a_model_and_sees_it_inspected(
    live_server: Any, celery_worker: Worker, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    _login(page, base, "alice")
    page.click("text=Upload a model")
    page.fill("input[name=name]", "browser-bert")
    page.select_option("select[name=task]", "text-embedding")
    page.set_input_files("#file-input", str(build_tiny_bert_onnx(tmp_path / "bert.onnx")))
    assert "bert.onnx" in page.inner_text("#file-name")
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    status = page.locator("[data-testid=version-status]")
    status.filter(has_text="ready").wait_for(timeout=60_000)
    inspection = page.locator("[data-testid=inspection]")
    assert "input_ids" in inspection.inner_text()
    assert "MatMul" in inspection.inner_text()
    page.screenshot(path=str(tmp_path / "version.png"), full_page=True)


def test_dropping_a_file_uploads_it_with_progress(
    live_server: Any, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/models/upload/")
    page.fill("input[name=name]", "dropped")
    data = base64.b64encode(build_tiny_bert_onnx(tmp_path / "drop.onnx").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'drop.onnx', {type: 'application/octet-stream'}));
            return dt; }""",
        data,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    assert "drop.onnx" in page.inner_text("#file-name")
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    assert page.locator("h1").inner_text().startswith("dropped v1")
    assert page.evaluate("document.getElementById('upload-progress') === null")


def test_a_bad_file_shows_the_servers_message(
    live_server: Any, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/models/upload/")
    page.fill("input[name=name]", "junk")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model" * 100)
    page.set_input_files("#file-input", str(junk))
    page.click("#upload-button")
    message = page.locator("#upload-status.error")
    message.wait_for()
    assert "onnx" in message.inner_text().lower()
    assert page.url.endswith("/models/upload/")


def test_an_operator_compresses_a_model_and_compares_variants(
    live_server: Any, celery_worker: Worker, alice: Any, page: Any, tmp_path: Path
) -> None:
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/models/upload/")
    page.fill("input[name=name]", "to-compress")
    page.set_input_files("#file-input", str(build_tiny_bert_onnx(tmp_path / "c.onnx", hidden=64)))
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    # The job form arrives with the inspection result, without a reload.
    page.select_option("select[name=recipe]", "onnx-int8-dynamic", timeout=60_000)
    page.click("text=Start job")
    page.wait_for_url(f"{base}/jobs/*/")
    page.locator("[data-testid=job-status]").filter(has_text="succeeded").wait_for(timeout=120_000)
    assert "cosine_mean" in page.inner_text("#job-progress")
    page.click("text=compare variants")
    table = page.locator("[data-testid=compare-table]")
    assert "onnx-int8-dynamic" in table.inner_text()
    # The chart script is deferred: wait for it rather than racing it.
    page.wait_for_function("typeof Chart === 'function'", timeout=30_000)
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)


def test_an_operator_creates_pauses_and_resumes_a_rollout(
    live_server: Any, alice: Any, page: Any, tmp_path: Path
) -> None:
    from fleet.models import Group
    from tests.fleet.publish_helpers import make_version, onnx_files, publish_now

    bundle = publish_now(make_version(onnx_files(tmp_path)))
    Group.objects.create(name="plant-3", selector="site=plant-3")
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/rollouts/")
    page.select_option("select[name=bundle]", bundle.pk)
    page.fill("input[name=waves]", "10,100")
    page.click("text=Start rollout")
    page.wait_for_url(f"{base}/rollouts/*/")
    status = page.locator("[data-testid=rollout-status]")
    assert status.inner_text() == "running"
    page.click("button:has-text('Pause')")
    page.locator("[data-testid=rollout-status]").filter(has_text="paused").wait_for()
    page.click("button:has-text('Resume')")
    page.locator("[data-testid=rollout-status]").filter(has_text="running").wait_for()
    history = page.inner_text("#rollout-status")
    assert "pause" in history and "resume" in history
    page.screenshot(path=str(tmp_path / "rollout.png"), full_page=True)
