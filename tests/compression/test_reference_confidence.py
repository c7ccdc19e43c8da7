"""The reference confidence histogram recorded at compression time (for PSI drift)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tinyfleet_agent._internal.telemetry import CONFIDENCE_EDGES

from compression.pipeline.assess import assess
from compression.pipeline.evaluate import confidence_histogram


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
