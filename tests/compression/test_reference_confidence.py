"""The reference confidence histogram recorded at compression time (for PSI drift)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tinyfleet_agent._internal.telemetry import CONFIDENCE_EDGES

from compression.models import Job, ModelVersion
from compression.pipeline.assess import assess
from compression.pipeline.evaluate import confidence_histogram
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for


def _tiny_classifier(path: Path, seed: int) -> Path:
    """x[1, 8] float -> logits[1, 3]: a real ONNX model onnxruntime runs."""
    weight = np.random.default_rng(seed).standard_normal((8, 3)).astype(np.float32) * 2
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "tiny-classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True)
    onnx.save(model, path / "model.onnx")
    return path


def _text_shaped_classifier(path: Path) -> Path:
    """input_ids[batch, seq] -> logits[batch, 3] (mean id through a 1x3 MatMul): accepts
    any sequence length, as the job's benchmark feeds text models."""
    weight = np.array([[0.05, -0.02, 0.0]], dtype=np.float32)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["ids_f"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        ],
        "text-classifier",
        [ids],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_it_bins_top_class_confidences_like_the_agent() -> None:
    logits = np.array([[0.0, 0.0], [10.0, 0.0], [np.log(0.72 / 0.28), 0.0]])
    histogram = confidence_histogram(logits)
    # top-class softmax: exactly 0.5 (on edge 0.5: index 9), ~1.0 (index 19), 0.72 (index 14)
    expected = [0] * (len(CONFIDENCE_EDGES) + 1)
    expected[9] += 1
    expected[19] += 1
    expected[14] += 1
    assert histogram["counts"] == expected
    assert histogram["edges"] == list(CONFIDENCE_EDGES) and histogram["count"] == 3


def test_assess_records_the_derived_classifiers_confidences(tmp_path: Path) -> None:
    parent = _tiny_classifier(tmp_path / "parent", seed=1)
    child = _tiny_classifier(tmp_path / "child", seed=2)
    result = assess(str(parent), str(child), "text-classification", str(tmp_path / "g.npz"))
    reference = result["reference_confidence"]
    assert reference["count"] == result["examples"] == sum(reference["counts"])
    # Recompute from the child's own outputs on the same seeded inputs, independently.
    import onnxruntime as ort

    session = ort.InferenceSession(str(child / "model.onnx"))
    rng = np.random.default_rng(7)  # assess's synthetic inputs use seed 7
    tops = []
    for _ in range(result["examples"]):
        logits = session.run(None, {"x": rng.standard_normal([1, 8]).astype(np.float32)})[0][0]
        probs = np.exp(logits - logits.max())
        tops.append(float((probs / probs.sum()).max()))
    expected = np.bincount(
        np.searchsorted(CONFIDENCE_EDGES, tops, side="left"), minlength=len(CONFIDENCE_EDGES) + 1
    )
    assert reference["counts"] == expected.tolist()
    assert "reference_confidence" not in assess(
        str(parent), str(child), "text-embedding", str(tmp_path / "e.npz")
    )


@pytest.mark.django_db(transaction=True)
def test_a_compression_job_stores_the_reference_on_the_derived_classifier(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    model = _text_shaped_classifier(tmp_path / "clf.onnx")
    body = upload(alice_api, model, name="tiny-clf", task="text-classification").json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready")
    started = alice_api.post("/api/v1/jobs", {"version": body["id"], "recipe": "onnx-int8-dynamic"})
    assert started.status_code == 201, started.content
    job = wait_for(
        lambda: (j := Job.objects.get(pk=started.json()["id"])).is_finished and j, timeout=120
    )
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    metrics = ModelVersion.objects.get(pk=job.result_version_id).metrics
    reference = metrics["reference_confidence"]
    assert reference["edges"] == list(CONFIDENCE_EDGES)
    assert sum(reference["counts"]) == reference["count"] == metrics["examples"] > 0
