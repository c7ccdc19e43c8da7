"""Issue #13 in a real browser (Debian's Chromium through Playwright): an operator uploads a
tiny teacher, starts a distill -> export-onnx -> onnx-int8-auto chain from its version
page, watches the chain page fill in by itself until every step has succeeded (each with
its version and measured numbers), publishes the student, and a real `tinyfleet-agent
run` process installs and serves it. Real parts: a live server, a real Celery worker
(training and converters in their subprocesses) and a real agent process. The training
parameters are those of tests/e2e/test_distill_chain.py, so the chain takes seconds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.template.defaultfilters import floatformat

from compression.chains import step_numbers, step_views
from compression.models import Chain, ModelVersion
from fleet.models import Bundle, Device
from fleet.security import director
from tests.browser.conftest import screenshot
from tests.browser.helpers import _login
from tests.compression.distill_helpers import build_teacher
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import Agent
from tests.e2e.test_distill_chain import STEPS
from tests.fixtures.tiny_models import zip_dir

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RECIPES = ["distill", "export-onnx", "onnx-int8-auto"]
FINISHED = re.compile(r"^\s*(succeeded|failed|cancelled)\s*$")


def _upload_teacher(page: Any, base: str, tmp_path: Path) -> str:
    """The teacher goes in through the upload page; returns its version page's URL."""
    archive = zip_dir(build_teacher(tmp_path / "teacher"), tmp_path / "teacher.zip")
    page.goto(f"{base}/models/upload/")
    page.get_by_label("Model name").fill("teacher")
    page.get_by_label("Task").select_option("text-embedding")
    page.set_input_files("#file-input", str(archive))
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(f"{base}/versions/*/")
    page.get_by_test_id("version-status").filter(has_text="ready").wait_for(timeout=120_000)
    return str(page.url)


def _row_numbers(row_text: str, numbers: dict[str, Any]) -> None:
    """The row shows the step's version and the numbers the template formats."""
    assert f"v{numbers['number']} ({numbers['format']})" in row_text, row_text
    assert f"{numbers['size_mb']} MB" in row_text, row_text
    if "cosine_mean" in numbers:
        assert floatformat(numbers["cosine_mean"], 4) in row_text, row_text
    if "nn_agreement" in numbers:
        assert f"{round(numbers['nn_agreement'] * 100)}%" in row_text, row_text
    if "latency_ms" in numbers:
        assert f"{floatformat(numbers['latency_ms'], 2)} ms" in row_text, row_text
    if "latency_ratio" in numbers:
        assert f"{floatformat(numbers['latency_ratio'], 3)}x" in row_text, row_text
    if "parameters" in numbers:
        assert f"{numbers['parameters']} params" in row_text, row_text
    if "origin_fidelity" in numbers:
        assert floatformat(numbers["origin_fidelity"], 4) in row_text, row_text


def test_an_operator_runs_a_distill_chain_and_an_agent_serves_the_student(
    live_server: Any,
    celery_worker: Worker,
    alice: Any,
    alice_api: Any,
    page: Any,
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.DEVICE_POLL_INTERVAL = 1
    base = live_server.url
    _login(page, base, "alice")
    teacher_url = _upload_teacher(page, base, tmp_path)
    teacher = ModelVersion.objects.get(pk=int(teacher_url.rstrip("/").rsplit("/", 1)[-1]))

    # The chain form arrives with the inspection; the steps typed in override the preset.
    form = page.get_by_test_id("chain-form")
    form.get_by_label("Pipeline").select_option(label="Distill (3 layers) -> ONNX -> INT8 auto")
    form.get_by_label("Steps").fill(json.dumps(STEPS))
    assert form.get_by_label("Training / calibration text").input_value() == ""
    assert form.get_by_label("Evaluation dataset").input_value() == ""
    screenshot(page, "distill-chain-1-form")
    form.get_by_role("button", name="Start chain").click()
    page.wait_for_url(f"{base}/chains/*/")
    chain = Chain.objects.get()
    assert page.url == f"{base}/chains/{chain.pk}/"
    assert chain.source_id == teacher.pk
    assert [s["recipe"] for s in chain.steps] == RECIPES
    assert chain.steps[0]["params"]["layers"] == 2  # the typed steps, not the preset's 3

    # The page refreshes itself (htmx), never reloads: a marker set now survives.
    page.evaluate("window.__notReloaded = true")
    status = page.get_by_test_id("chain-status")
    assert status.inner_text() in ("queued", "running")
    screenshot(page, "distill-chain-2-running")
    try:
        status.filter(has_text=FINISHED).wait_for(timeout=420_000)
    except Exception as exc:
        raise AssertionError(f"{exc}\n--- worker ---\n{celery_worker.log()[-3000:]}") from exc
    screenshot(page, "distill-chain-3-finished")
    error = page.get_by_test_id("chain-error")
    assert status.inner_text() == "succeeded", (
        error.inner_text() if error.count() else "",
        celery_worker.log()[-3000:],
    )
    assert page.evaluate("window.__notReloaded === true")
    assert "Traceback" not in page.content()
    # Finished: the fragment stops polling and the cancel button is gone.
    assert page.locator("#chain-steps[hx-trigger]").count() == 0
    assert page.get_by_role("button", name="Cancel chain").count() == 0

    rows = page.get_by_test_id("chain-step")
    assert rows.count() == 3
    steps = step_views(chain)
    numbers = [step_numbers(s) for s in steps]
    for row, step, n in zip(rows.all(), steps, numbers, strict=True):
        text = row.inner_text()
        assert step.recipe in text and step.job is not None
        assert f"#{step.job.pk} succeeded" in text, text
        _row_numbers(text, n)
    # Distill: a smaller student that says how many parameters it kept.
    assert "layers=2" in rows.nth(0).inner_text() and "None" not in rows.nth(0).inner_text()
    assert numbers[0]["format"] == "hf-dir" and numbers[0]["parameters"] > 0
    # Export and int8: fidelity against their input and a measured latency.
    for n in numbers[1:]:
        assert n["format"] == "onnx" and "cosine_mean" in n and n["latency_ms"] > 0
    assert "latency_ratio" in numbers[2]
    # Each step's version is the next step's input: the lineage runs back to the teacher.
    student = ModelVersion.objects.get(pk=numbers[2]["version"])
    assert [v.pk for v in student.lineage()] == [teacher.pk] + [n["version"] for n in numbers]

    # Every step was also measured against the teacher itself ("vs original").
    assert all("origin_fidelity" in n for n in numbers), numbers

    # The comparison page puts the measured steps on one fidelity-to-the-original curve.
    page.goto(f"{base}/models/{teacher.model_id}/compare/")
    chart = page.locator("#origin-chart")
    chart.wait_for()
    page.wait_for_function("document.getElementById('origin-chart').dataset.points !== undefined")
    # Plotted: the variants with a measured latency (the ONNX export and the int8 model).
    assert chart.get_attribute("data-points") == "2"
    assert int(chart.get_attribute("data-curve") or 0) >= 1
    cells = page.get_by_test_id("origin-fidelity").all_inner_texts()
    assert cells[0] == "original" and floatformat(numbers[2]["origin_fidelity"], 4) in cells[-1]
    screenshot(page, "distill-chain-compare-curve")
    page.goto(f"{base}/chains/{chain.pk}/")

    # The int8 student's page, reached from the chain page, publishes it.
    rows.nth(2).get_by_role("link", name=f"v{student.number}").click()
    page.wait_for_url(f"{base}/versions/{student.pk}/")
    origin = page.get_by_test_id("fidelity-origin").inner_text()
    assert f"Against the original (v{teacher.number})" in origin
    assert floatformat(numbers[2]["origin_fidelity"], 4) in origin
    lineage = page.locator("dl.facts").first.inner_text()
    assert "(distill) → " in lineage and "(onnx-int8-auto)" in lineage
    page.get_by_role("button", name="Publish as bundle").click()
    page.wait_for_url(f"{base}/bundles/*/")
    page.get_by_test_id("bundle-status").filter(has_text="published").wait_for(timeout=120_000)
    bundle = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert Bundle.objects.get(pk=bundle).version_id == student.pk
    screenshot(page, "distill-chain-4-published")

    # A real agent enrolls, installs the student and answers with its embeddings.
    group = alice_api.post("/api/v1/groups", {"name": "edge"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    agent = Agent("student", tmp_path / "student")
    agent.cli("enroll", "--server", base, "--token", token, "--name", "student")
    agent.start()
    try:
        director.assign(Device.objects.get(), Bundle.objects.get(pk=bundle))
        wait_for(lambda: agent.serving() == bundle, timeout=120)
        texts = ["the tiny model runs fast on chips", "a small device"]
        answer = agent.post("/v1/predict", {"inputs": texts})
        assert answer["bundle"] == bundle
        embeddings = [o["embedding"] for o in answer["outputs"]]
        assert len(embeddings) == 2 and all(len(e) == 32 for e in embeddings)
        assert embeddings[0] != embeddings[1] and any(x != 0 for x in embeddings[0])
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log()}") from exc
    finally:
        agent.stop()
