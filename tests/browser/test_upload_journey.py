"""The newcomer's journey in a real browser: log in, drop a model on the upload page,
watch the progress bar, and see the inspection appear without reloading."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import screenshot
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
    # The page's change handler names the file; on a loaded machine it runs a moment later.
    page.locator("#file-name").filter(has_text="bert.onnx").wait_for(timeout=10_000)
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    status = page.locator("[data-testid=version-status]")
    status.filter(has_text="ready").wait_for(timeout=60_000)
    inspection = page.locator("[data-testid=inspection]")
    assert "input_ids" in inspection.inner_text()
    assert "MatMul" in inspection.inner_text()
    screenshot(page, "upload-1-inspected")


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
    page.locator("#file-name").filter(has_text="drop.onnx").wait_for(timeout=10_000)
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
    """Journey 1: upload -> compress -> compare."""
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/models/upload/")
    page.fill("input[name=name]", "to-compress")
    page.set_input_files("#file-input", str(build_tiny_bert_onnx(tmp_path / "c.onnx", hidden=64)))
    page.click("#upload-button")
    page.wait_for_url(f"{base}/versions/*/")
    # The job form arrives with the inspection result, without a reload.
    page.select_option("select[name=recipe]", "onnx-int8-dynamic", timeout=60_000)
    screenshot(page, "journey1-1-uploaded")
    page.click("text=Start job")
    page.wait_for_url(f"{base}/jobs/*/")
    page.locator("[data-testid=job-status]").filter(has_text="succeeded").wait_for(timeout=120_000)
    assert "cosine_mean" in page.inner_text("#job-progress")
    screenshot(page, "journey1-2-compressed")
    page.click("text=compare variants")
    table = page.locator("[data-testid=compare-table]")
    assert "onnx-int8-dynamic" in table.inner_text()
    # The chart script is deferred: wait for it rather than racing it.
    page.wait_for_function("typeof Chart === 'function'", timeout=30_000)
    screenshot(page, "journey1-3-compared")


def _status(page: Any, text: str) -> None:
    page.locator("[data-testid=rollout-status]").filter(has_text=text).wait_for(timeout=60_000)


def test_an_operator_publishes_rolls_out_advances_pauses_resumes_and_rolls_back(
    live_server: Any, celery_worker: Worker, alice: Any, page: Any, tmp_path: Path
) -> None:
    """Journey 2: publish -> roll out -> waves advance -> pause -> resume -> roll back.
    A real worker publishes the bundle and evaluates the gates; the four devices are
    simulated server-side (their reports go through the real ingest code)."""
    from fleet.models import DeviceEvent, Group, Rollout
    from fleet.rollout_tasks import evaluate_rollouts
    from fleet.security import director
    from tests.fleet.publish_helpers import make_device, make_version, onnx_files
    from tests.fleet.telemetry_helpers import ingest

    version = make_version(onnx_files(tmp_path), name="journey")
    Group.objects.create(name="plant-3", selector="site=plant-3")
    devices = [make_device(f"pi-{i}").device for i in range(4)]
    for d in devices:
        d.labels = {"site": "plant-3"}
        d.save()
    base = live_server.url
    _login(page, base, "alice")
    page.goto(f"{base}/versions/{version.pk}/")
    page.click("[data-testid=publish]")
    page.wait_for_url(f"{base}/bundles/*/")
    page.locator("[data-testid=bundle-status]").filter(has_text="published").wait_for(
        timeout=60_000
    )
    bundle_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    screenshot(page, "journey2-1-published")

    page.goto(f"{base}/rollouts/")
    page.select_option("select[name=bundle]", bundle_id)
    page.fill("input[name=waves]", "25,100")
    page.fill("input[name=soak_seconds]", "0")
    page.click("text=Start rollout")
    page.wait_for_url(f"{base}/rollouts/*/")
    _status(page, "running")
    assert "wave 1 of 2" in page.inner_text("#rollout-status")
    screenshot(page, "journey2-2-canary-wave")

    # The canary installs and reports healthy numbers; the worker's gate evaluation
    # promotes the rollout and the page (polling) shows the second wave.
    (canary,) = [d for d in devices if (a := director.current_assignment(d)) and a.bundle_id]
    DeviceEvent.objects.create(device=canary, bundle=bundle_id, state="active")
    latency = [0] * 43
    latency[12] = 20
    section = {"bundle": bundle_id, "requests": 20, "latency_ms": latency}
    ingest(canary, {"bundles": [{**section, "golden": {"agreement": 1.0}}]})
    evaluate_rollouts.delay()
    page.locator("#rollout-status").filter(has_text="wave 2 of 2").wait_for(timeout=60_000)
    assert "promote" in page.inner_text("#rollout-status")
    screenshot(page, "journey2-3-waves-advanced")

    page.click("button:has-text('Pause')")
    _status(page, "paused")
    screenshot(page, "journey2-4-paused")
    page.click("button:has-text('Resume')")
    _status(page, "running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Roll back')")
    _status(page, "rolled_back")
    history = page.inner_text("#rollout-status")
    assert all(step in history for step in ("promote", "pause", "resume", "rollback"))
    rollout = Rollout.objects.get(bundle_id=bundle_id)
    assert rollout.status == "rolled_back"
    screenshot(page, "journey2-5-rolled-back")
