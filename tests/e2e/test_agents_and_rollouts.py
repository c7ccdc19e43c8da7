"""End to end: a live server, a real Celery worker, and real `tinyfleet-agent` processes.

A model goes upload -> compression job (real worker) -> bundle -> rollout. Agents enroll
with a token, install the bundle (verify, download, decrypt, self-test, switch) and serve
it on their loopback API. A second bundle whose weights were corrupted after its golden
set was recorded (what a broken converter does, cf. tflite-runtime 2.14 on MiniLM) fails
the canary's self-test, and the rollout rolls itself back.

The one stand-in: rollout gates are evaluated by calling the same function Celery beat
runs (`gates.step_all`) from the test loop, instead of waiting for a beat process.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from onnx import numpy_helper

from compression.models import ModelVersion
from fleet.models import Device
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import Agent, _derive, _publish, _settle, _text_model_zip

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    fleet = [Agent(f"agent-{i}", tmp_path / f"agent-{i}") for i in range(3)]
    yield fleet
    for agent in fleet:
        agent.stop()


def _corrupted_twin(good: ModelVersion, tmp: Path) -> ModelVersion:
    """Same golden set as `good`, but weights scrambled: it must fail its self-test."""
    with default_storage.open(good.storage_key) as handle:
        data = handle.read()
    src = tmp / "good.zip"
    src.write_bytes(data)
    out = tmp / "bad.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            member = zin.read(name)
            if name.endswith(".onnx"):
                model = onnx.load_from_string(member)
                rng = np.random.default_rng(3)
                for init in model.graph.initializer:
                    array = numpy_helper.to_array(init)
                    if array.dtype == np.float32 and array.size > 64:
                        init.CopyFrom(
                            numpy_helper.from_array(
                                rng.standard_normal(array.shape).astype(np.float32), init.name
                            )
                        )
                member = model.SerializeToString()
            zout.writestr(name, member)
    import hashlib

    raw = out.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    key = default_storage.save(f"models/{sha[:2]}/{sha}/bad.zip", ContentFile(raw))
    return ModelVersion.objects.create(
        model=good.model,
        number=good.number + 1,
        format=good.format,
        storage_key=key,
        original_filename="bad.zip",
        size_bytes=len(raw),
        sha256=sha,
        parent=good.parent,
        recipe=good.recipe,
        status="ready",
        inspection=good.inspection,
        metrics=good.metrics,
        pipeline=good.pipeline,
        golden_key=good.golden_key,
        golden_sha256=good.golden_sha256,
        lineage_info=good.lineage_info,
    )


def test_agents_install_serve_and_a_bad_canary_rolls_back(
    live_server: Any,
    celery_worker: Worker,
    alice_api: Any,
    agents: list[Agent],
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.DEVICE_POLL_INTERVAL = 1
    settings.SITE_URL = live_server.url
    uploaded = upload(alice_api, _text_model_zip(tmp_path), name="tiny-embedder")
    assert uploaded.status_code == 201, uploaded.content
    wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
    good = _derive(alice_api, uploaded.json()["id"], "onnx-int8-dynamic")
    assert good.metrics["evaluated_on"] == "built-in sentences"
    good_bundle = _publish(good)
    bad_bundle = _publish(_corrupted_twin(good, tmp_path))

    group = alice_api.post("/api/v1/groups", {"name": "lab", "selector": "site=lab"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    for agent in agents:
        enrolled = agent.cli(
            "enroll",
            "--server",
            live_server.url,
            "--token",
            token,
            "--name",
            agent.name,
            "--label",
            "site=lab",
        )
        assert json.loads(enrolled.stdout)["device_id"]
        assert (agent.state_dir / "identity.key").stat().st_mode & 0o777 == 0o600
        agent.start()
    assert Device.objects.count() == 3

    # A good bundle promotes through every wave.
    first = alice_api.post(
        "/api/v1/rollouts",
        {
            "bundle": good_bundle,
            "group": group["id"],
            "waves": [34, 100],
            "soak_seconds": 0,
            "gates": {"min_devices_reporting": 1},
        },
    ).json()
    done = _settle(first["id"], lambda r: r.status != "running", agents)
    assert done.status == "succeeded", (done.reason, done.last_evaluation)
    wait_for(lambda: all(a.serving() == good_bundle for a in agents), timeout=60)
    answer = agents[0].post("/v1/predict", {"inputs": ["the pump is vibrating", "all good"]})
    assert answer["bundle"] == good_bundle and len(answer["outputs"]) == 2
    assert abs(float(np.linalg.norm(answer["outputs"][0]["embedding"])) - 1.0) < 1e-3

    # A bundle that computes garbage fails the canary's self-test and rolls back.
    second = alice_api.post(
        "/api/v1/rollouts",
        {"bundle": bad_bundle, "group": group["id"], "waves": [30, 100], "soak_seconds": 0},
    ).json()
    rolled = _settle(second["id"], lambda r: r.status != "running", agents)
    assert rolled.status == "rolled_back", (rolled.reason, rolled.last_evaluation)
    assert "install_failure_rate" in rolled.reason
    failed = [d for d in Device.objects.all() if "self-test" in str(d.state.get("last_error"))]
    assert len(failed) == 1, [d.state for d in Device.objects.all()]
    time.sleep(3)
    assert all(a.serving() == good_bundle for a in agents), [a.log() for a in agents]
    assert alice_api.get(f"/api/v1/devices/{failed[0].pk}").json()["active_bundle"] == good_bundle

    # Telemetry reached the server and merges into the in-field view.
    wait_for(
        lambda: alice_api.get(f"/api/v1/metrics?bundle={good_bundle}").json()["series"], timeout=30
    )
