"""End to end: one release with an ONNX and a TFLite variant of the same model, and two
real `tinyfleet-agent` processes on this machine, one told to use only onnxruntime and
the other only LiteRT (the agent's `runtimes` setting, TINYFLEET_AGENT_RUNTIMES). Each
reports its runtimes at enrollment, is directed to the variant it can run, installs it
(verify, download, decrypt, golden self-test on its runtime) and serves it.

Both variants compute the same tiny classifier, so their golden sets and answers agree.
The one stand-in, as in test_agents_and_rollouts: gates are stepped from the test loop
(`gates.step_all`, what Celery beat runs) instead of waiting for a beat process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from onnx import TensorProto, helper, numpy_helper

from compression.models import ModelVersion
from compression.pipeline.golden import build_golden
from fleet.models import Bundle, Device
from tests.conftest import wait_for
from tests.e2e.agent_helpers import Agent, _settle
from tests.fixtures.tiny_models import (
    _TFL_BIAS,
    _TFL_SHIFT,
    _TFL_WEIGHTS,
    build_tiny_tflite,
    tiny_tflite_reference,
)
from tests.fleet.publish_helpers import make_version, publish_now

pytestmark = [pytest.mark.django_db(transaction=True)]

EXAMPLES = [np.random.default_rng(i).normal(size=(1, 4)).astype(np.float32) for i in range(4)]


def _onnx_twin(path: Path) -> Path:
    """The tiny TFLite classifier (input[1,4] -> FC -> +shift -> softmax) as ONNX."""
    weights = numpy_helper.from_array(_TFL_WEIGHTS.T.copy(), "weights")
    bias = numpy_helper.from_array(_TFL_BIAS + _TFL_SHIFT, "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weights"], ["logits"]),
            helper.make_node("Add", ["logits", "bias"], ["shifted"]),
            helper.make_node("Softmax", ["shifted"], ["output"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _with_golden(version: ModelVersion, work: Path) -> ModelVersion:
    """Give the version a real golden set (the reference classifier's answers)."""
    path = work / f"golden-{version.pk}.npz"
    sha = build_golden(
        path,
        [{"input": x} for x in EXAMPLES],
        [tiny_tflite_reference(x) for x in EXAMPLES],
        "tensor",
        {"max_abs_error": 1e-4},
    )
    version.golden_key = default_storage.save(f"golden/{sha}.npz", ContentFile(path.read_bytes()))
    version.golden_sha256 = sha
    version.save(update_fields=["golden_key", "golden_sha256"])
    return version


def _variants(tmp: Path) -> tuple[Bundle, Bundle]:
    onnx_file = _onnx_twin(tmp / "model.onnx")
    tflite_file = build_tiny_tflite(tmp / "model.tflite")
    common = {"name": "vibration", "task": "tensor", "pipeline": {"pooling": "none"}}
    onnx_version = make_version({"model.onnx": onnx_file.read_bytes()}, fmt="onnx", **common)
    tflite_version = make_version(
        {"model.tflite": tflite_file.read_bytes()}, fmt="tflite", **common
    )
    return (
        publish_now(_with_golden(onnx_version, tmp)),
        publish_now(_with_golden(tflite_version, tmp)),
    )


@pytest.fixture
def two_agents(tmp_path: Path) -> Iterator[dict[str, Agent]]:
    fleet = {}
    for runtime in ("onnxruntime", "litert"):
        agent = Agent(f"only-{runtime}", tmp_path / f"agent-{runtime}")
        agent.env["TINYFLEET_AGENT_RUNTIMES"] = runtime
        fleet[runtime] = agent
    yield fleet
    for agent in fleet.values():
        agent.stop()


def test_agents_with_different_runtimes_get_different_variants(
    live_server: Any, alice_api: Any, two_agents: dict[str, Agent], tmp_path: Path, settings: Any
) -> None:
    settings.DEVICE_POLL_INTERVAL = 1
    settings.SITE_URL = live_server.url
    onnx_bundle, tflite_bundle = _variants(tmp_path)
    group = alice_api.post("/api/v1/groups", {"name": "press", "selector": "site=press"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    for agent in two_agents.values():
        agent.cli(
            "enroll", "--server", live_server.url, "--token", token,
            "--name", agent.name, "--label", "site=press",
        )  # fmt: skip
        agent.start()
    facts = {d.name: d.facts["runtimes"] for d in Device.objects.all()}
    assert set(facts["only-onnxruntime"]) == {"onnxruntime"}
    assert set(facts["only-litert"]) == {"litert"}

    created = alice_api.post(
        "/api/v1/rollouts",
        {
            "variants": [onnx_bundle.pk, tflite_bundle.pk],
            "group": group["id"],
            "waves": [100],
            "soak_seconds": 0,
        },
    )
    assert created.status_code == 201, created.content
    assert created.json()["no_compatible_variant"] == []
    agents = list(two_agents.values())
    done = _settle(created.json()["id"], lambda r: r.status != "running", agents)
    assert done.status == "succeeded", (done.reason, done.last_evaluation)

    wait_for(lambda: two_agents["onnxruntime"].serving() == onnx_bundle.pk, timeout=60)
    wait_for(lambda: two_agents["litert"].serving() == tflite_bundle.pk, timeout=60)
    example = {"input": EXAMPLES[0].tolist()}
    answers = [agent.post("/v1/predict", {"inputs": [example]}) for agent in agents]
    assert [a["bundle"] for a in answers] == [onnx_bundle.pk, tflite_bundle.pk]
    # {output name: values}: the names differ between the two graphs, the numbers do not.
    expected = tiny_tflite_reference(EXAMPLES[0]).ravel()
    for answer in answers:
        (values,) = answer["outputs"][0].values()
        np.testing.assert_allclose(np.asarray(values).ravel(), expected, atol=1e-4)
    detail = alice_api.get(f"/api/v1/rollouts/{created.json()['id']}").json()
    assert [(v["bundle"], v["runtime"]) for v in detail["variants"]] == [
        (onnx_bundle.pk, "onnxruntime"),
        (tflite_bundle.pk, "litert"),
    ]
