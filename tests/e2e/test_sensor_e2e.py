"""End to end, the sensor journey with real processes: sensor windows uploaded through
the API, a sensor Transformer trained by a real Celery worker (synthetic motion data,
few epochs), int8 + TFLite Micro, published, rolled out to a real `tinyfleet-agent`
that installs it (golden self-test on LiteRT) and serves a *stream* of samples with a
prediction per hop; feedback on those predictions shows as accuracy on the bundle's
monitor page. Stand-in as in test_agents_and_rollouts: gates are stepped from the test
loop (`gates.step_all`) and telemetry folded here (`fold_pending`) instead of beat."""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from compression.models import Job
from compression.pipeline.sensor.data import load_sensor_data
from fleet.models import Bundle, Device
from fleet.telemetry.rollup_fold import fold_pending
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import Agent, _settle
from tests.fixtures.sensor_data import synthetic_ts_pair

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    device = Agent("wrist-1", tmp_path / "agent")
    device.env["TINYFLEET_AGENT_RUNTIMES"] = "litert"
    yield device
    device.stop()


def _train(api: Any, tmp_path: Path) -> tuple[int, Path]:
    train_file, test_file = synthetic_ts_pair(tmp_path / "data")
    ids = []
    for path in (train_file, test_file):
        answer = api.post(
            "/api/v1/datasets", {"file": SimpleUploadedFile(path.name, path.read_bytes())}
        )
        assert answer.status_code == 201, answer.content
        ids.append(answer.json()["id"])
    params = {"epochs": 30, "d_model": 16, "ff": 32}
    started = api.post(
        "/api/v1/sensor-models",
        {"name": "wrist", "dataset": ids[0], "eval_dataset": ids[1], "params": params},
    )
    assert started.status_code == 201, started.content
    job: Job = wait_for(
        lambda: (j := Job.objects.get(pk=started.json()["job"]["id"])).is_finished and j,
        timeout=400,
    )
    assert job.status == "succeeded", (job.error, job.log)
    assert job.result_version_id is not None
    return job.result_version_id, test_file


def test_it_serves_a_trained_sensor_model_on_a_stream_and_reports_feedback_accuracy(
    live_server: Any,
    celery_worker: Worker,
    alice_api: Any,
    alice: Any,
    agent: Agent,
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.DEVICE_POLL_INTERVAL = 1
    settings.SITE_URL = live_server.url
    version_id, test_file = _train(alice_api, tmp_path)
    published = alice_api.post("/api/v1/bundles", {"version": version_id})
    assert published.status_code in (200, 201, 202), published.content
    bundle_id = published.json()["id"]
    wait_for(lambda: Bundle.objects.get(pk=bundle_id).status == "published", timeout=120)

    group = alice_api.post("/api/v1/groups", {"name": "wearables", "selector": "kind=wrist"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    agent.cli(
        "enroll",
        "--server",
        live_server.url,
        "--token",
        token,
        "--name",
        agent.name,
        "--label",
        "kind=wrist",
    )
    agent.start()
    rollout = alice_api.post(
        "/api/v1/rollouts",
        {"bundle": bundle_id, "group": group["id"], "waves": [100], "soak_seconds": 0},
    )
    assert rollout.status_code == 201, rollout.content
    done = _settle(rollout.json()["id"], lambda r: r.status != "running", [agent])
    assert done.status == "succeeded", (done.reason, [d.state for d in Device.objects.all()])
    wait_for(lambda: agent.serving() == bundle_id, timeout=60)

    # Each test window streamed sample by sample (in chunks, as a sensor driver would):
    # nothing until a full window, then one prediction; feedback gives the true class.
    test = load_sensor_data(test_file)
    assert test.y is not None
    correct = 0
    for i, window in enumerate(test.x[:12]):
        samples = window.T.tolist()
        first = agent.post("/v1/stream", {"stream": f"w{i}", "samples": samples[:40]})
        assert first["outputs"] == [] and first["buffered"] == 40
        second = agent.post("/v1/stream", {"stream": f"w{i}", "samples": samples[40:]})
        assert second["ends"] == [64] and len(second["outputs"]) == 1, second
        truth = test.class_names[int(test.y[i])]
        correct += second["outputs"][0]["label"] == truth
        fed = agent.post("/v1/feedback", {"prediction_id": second["prediction_id"], "label": truth})
        assert fed["ok"] is True
    assert correct >= 10

    # A hop later (32 samples) the same stream answers again.
    more = agent.post("/v1/stream", {"stream": "w0", "samples": test.x[1].T.tolist()[:32]})
    assert more["ends"] == [96] and len(more["outputs"]) == 1
    with pytest.raises(urllib.error.HTTPError) as refused:
        agent.post("/v1/stream", {"stream": "w0", "samples": [[1.0, 2.0]]})
    assert refused.value.code == 400

    def folded_accuracy() -> str | None:
        fold_pending()
        page = Client()
        page.force_login(alice)
        html = page.get(f"/bundles/{bundle_id}/monitor/").content.decode()
        return html if "(12)" in html else None

    html = wait_for(folded_accuracy, timeout=60, interval=1.0)
    assert f"{correct / 12:.3f} (12)" in html
