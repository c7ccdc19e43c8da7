"""ONNX compression recipes on a tiny BERT-like graph: fast, no real model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from compression.pipeline import auto_int8, quantize
from compression.pipeline.auto_int8 import (
    AutoInt8Params,
    FidelityTargetError,
    activation_absmax,
    quantize_int8_auto,
    smooth_and_split,
)
from compression.pipeline.auto_int8 import graph as auto_int8_graph
from compression.pipeline.auto_int8 import search as auto_int8_search
from compression.pipeline.benchmark import benchmark_model, compare_latency
from compression.pipeline.quantize import (
    DynamicInt8Params,
    Fp16Params,
    QuantizeError,
    StaticInt8Params,
    convert_fp16,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from compression.pipeline.runner import (
    ConverterCrashError,
    ConverterTimeoutError,
    run_in_subprocess,
)
from compression.pipeline.textdata import DatasetError
from tests.fixtures.tiny_models import bert_feed, build_tiny_bert_onnx, build_tiny_hf_dir

HIDDEN = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert_onnx(
        tmp_path_factory.mktemp("tiny") / "model.onnx", layers=2, hidden=HIDDEN, heads=2
    )


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    n, seq = 24, 12
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(
        path,
        input_ids=rng.integers(0, 128, (n, seq)).astype(np.int64),
        attention_mask=np.ones((n, seq), np.int64),
        token_type_ids=np.zeros((n, seq), np.int64),
    )
    return path


def _ops(path: str | Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _run(path: str | Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def _rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.abs(ref - out).mean() / np.abs(ref).mean())


def test_it_quantizes_dynamic_per_channel_to_integer_matmuls(tiny: Path, tmp_path: Path) -> None:
    result = quantize_int8_dynamic(str(tiny), str(tmp_path))
    ops = _ops(result.output_path)
    assert ops["MatMulInteger"] >= 12  # Q, K, V, O, up, down in each of 2 layers
    assert ops["DynamicQuantizeLinear"] > 0
    assert result.metrics["size_ratio"] < 1.0
    feed = bert_feed(seq=9)
    assert _rel_error(_run(tiny, feed), _run(result.output_path, feed)) < 0.05
    scales = [
        numpy_helper.to_array(i)
        for i in onnx.load(result.output_path).graph.initializer
        if i.name.endswith("_scale")
    ]
    assert any(s.size == HIDDEN for s in scales), "per-channel weights have one scale per column"


def test_it_quantizes_per_tensor_only_when_asked(tiny: Path, tmp_path: Path) -> None:
    result = quantize_int8_dynamic(str(tiny), str(tmp_path), DynamicInt8Params(per_tensor=True))
    scales = [
        numpy_helper.to_array(i)
        for i in onnx.load(result.output_path).graph.initializer
        if i.name.endswith("_scale")
    ]
    assert scales and all(s.size == 1 for s in scales)
    assert "per_channel=False" in result.log[0]


def test_it_leaves_excluded_nodes_in_float(tiny: Path, tmp_path: Path) -> None:
    matmuls = [n.name for n in onnx.load(str(tiny)).graph.node if n.op_type == "MatMul"]
    params = DynamicInt8Params(nodes_to_exclude=tuple(matmuls), preprocess=False)
    result = quantize_int8_dynamic(str(tiny), str(tmp_path), params)
    assert _ops(result.output_path)["MatMulInteger"] == 0


def test_it_accepts_a_model_folder(tiny: Path, tmp_path: Path) -> None:
    result = quantize_int8_dynamic(str(tiny.parent), str(tmp_path / "out"))
    assert Path(result.output_path).is_file()


def test_it_rejects_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(QuantizeError):
        quantize_int8_dynamic(str(bad), str(tmp_path / "out"))


def test_it_quantizes_static_qdq_with_npz_calibration(
    tiny: Path, calib_npz: Path, tmp_path: Path
) -> None:
    result = quantize_int8_static(
        str(tiny), str(tmp_path), StaticInt8Params(max_samples=8), calibration_path=str(calib_npz)
    )
    ops = _ops(result.output_path)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    feed = bert_feed(seq=12)
    assert _rel_error(_run(tiny, feed), _run(result.output_path, feed)) < 0.1


def test_it_calibrates_static_with_the_entropy_method(
    tiny: Path, calib_npz: Path, tmp_path: Path
) -> None:
    params = StaticInt8Params(calibration_method="entropy", max_samples=8)
    result = quantize_int8_static(str(tiny), str(tmp_path), params, calibration_path=str(calib_npz))
    assert "method=entropy" in result.log[0]


def test_it_rejects_an_empty_calibration_set(tiny: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(DatasetError) as err:
        quantize_int8_static(str(tiny), str(tmp_path / "o"), calibration_path=str(empty))
    assert isinstance(err.value, ValueError)
    assert "no arrays" in str(err.value)


def test_it_rejects_calibration_data_that_does_not_match_the_model(
    tiny: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(DatasetError, match="missing inputs"):
        quantize_int8_static(str(tiny), str(tmp_path / "o"), calibration_path=str(wrong))
    ragged = tmp_path / "ragged.npz"
    np.savez(
        ragged,
        input_ids=np.zeros((4, 8), np.int64),
        attention_mask=np.ones((3, 8), np.int64),
        token_type_ids=np.zeros((4, 8), np.int64),
    )
    with pytest.raises(DatasetError, match="first dimension"):
        quantize_int8_static(str(tiny), str(tmp_path / "o"), calibration_path=str(ragged))


def test_it_rejects_text_calibration_without_a_tokenizer(tiny: Path, tmp_path: Path) -> None:
    texts = tmp_path / "calib.jsonl"
    texts.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(DatasetError, match="tokenizer"):
        quantize_int8_static(str(tiny), str(tmp_path / "o"), calibration_path=str(texts))


def test_it_rejects_an_unknown_calibration_method(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="calibration method"):
        quantize_int8_static(str(tiny), str(tmp_path), StaticInt8Params(calibration_method="magic"))


def test_it_converts_to_fp16_keeping_float32_inputs_and_outputs(tiny: Path, tmp_path: Path) -> None:
    result = convert_fp16(str(tiny), str(tmp_path), Fp16Params())
    model = onnx.load(result.output_path)
    types = Counter(i.data_type for i in model.graph.initializer)
    assert types[onnx.TensorProto.FLOAT16] > 0
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    feed = bert_feed(seq=9)
    out = _run(result.output_path, feed)
    assert out.dtype == np.float32
    assert _rel_error(_run(tiny, feed), out) < 0.01
    assert 0.45 < result.metrics["size_ratio"] < 0.6


def test_it_keeps_fp32_outputs_when_smoothing_and_splitting_outliers(
    tiny: Path, calib_npz: Path
) -> None:
    # The rewrite is exact algebra (X/s @ s*W, plus outlier rows added back),
    # so before quantization the outputs must not move.
    model = onnx.load(str(tiny))
    arrays = np.load(calib_npz)
    feeds = [{k: arrays[k][i : i + 1] for k in arrays.files} for i in range(6)]
    absmax, sensitivity = activation_absmax(model, feeds)
    assert len(sensitivity) == 12 and all(v >= 0 for v in sensitivity.values())
    alpha = {k: 0.8 for k in auto_int8.KINDS}
    smoothed, side = smooth_and_split(model, absmax, alpha, {"down": 4, "up": 2, "shared": 2})
    onnx.checker.check_model(smoothed)
    assert len(side) == 2 * (1 + 1 + 3)  # per layer: down, up, and Q/K/V side MatMuls
    feed = bert_feed(seq=9)
    sess = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feed)[0], _run(tiny, feed), rtol=1e-4, atol=1e-4)


def test_it_makes_int8_weight_pairs_safe_from_int16_saturation() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (64, 16))
    w[10:12, 3] = 9.0  # a same-sign pair of large weights in one column
    q, scale, grown = auto_int8_graph._pair_safe(w)
    a, b = q[0::2].astype(int), q[1::2].astype(int)
    same = np.sign(a) == np.sign(b)
    assert np.all(np.where(same, abs(a) + abs(b), 0) <= 128)
    assert grown >= 1
    assert np.abs(q * scale - w).max() <= scale.max()  # still a faithful quantization


def _gemm_head_model(rng: np.random.Generator) -> onnx.ModelProto:
    """A pooler and a classifier as torch.nn.Linear exports them: Gemm, transB=1, the
    weights stored [out, in]; the pooler square (shape alone cannot tell orientation)."""
    from onnx import TensorProto, helper

    pooler = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    classifier = rng.normal(0, 0.3, (4, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "pooler.weight", "pooler.bias"], ["p"], transB=1),
        helper.make_node("Tanh", ["p"], ["t"]),
        helper.make_node(
            "Gemm", ["t", "classifier.weight", "classifier.bias"], ["logits"], transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(pooler, "pooler.weight"),
            numpy_helper.from_array(np.zeros(16, np.float32), "pooler.bias"),
            numpy_helper.from_array(classifier, "classifier.weight"),
            numpy_helper.from_array(np.zeros(4, np.float32), "classifier.bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.ir_version = 8  # what onnxruntime reads, whatever onnx writes by default
    return model


def test_saturation_safe_requantization_keeps_gemm_weights_oriented(tmp_path: Path) -> None:
    # A sequence-classification export ends in two Gemm(transB=1) nodes; quantize_dynamic
    # turns them into MatMulInteger with the weights transposed. Re-quantizing from the
    # float [out, in] initializer crashed on the classifier (size 64 into shape (4,)) and,
    # worse, silently used the square pooler the wrong way round.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(3)
    model = _gemm_head_model(rng)
    path = tmp_path / "q.onnx"
    quantize_dynamic(model, str(path), per_channel=True, weight_type=QuantType.QInt8)
    quantized = onnx.load(str(path))
    assert {n.op_type for n in quantized.graph.node} >= {"MatMulInteger"}
    auto_int8_graph.saturation_safe_requantize(quantized, model)
    x = rng.normal(0, 1, (32, 16)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    reference, candidate = want.run(None, {"x": x})[0], got.run(None, {"x": x})[0]
    assert np.abs(candidate - reference).max() < 0.1 * np.abs(reference).max()
    assert (candidate.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_it_picks_an_auto_int8_candidate_that_meets_the_target(
    tiny: Path, calib_npz: Path, tmp_path: Path
) -> None:
    params = AutoInt8Params(
        tensor_rel_error_max=0.05,
        candidates=("dynamic-per-channel", "smoothquant-0.8-outliers-down8"),
        latency_rounds=2,
        eval_samples=8,
    )
    stages: list[str] = []
    result = quantize_int8_auto(
        str(tiny),
        str(tmp_path),
        params,
        progress=lambda f, stage, m: stages.append(stage),
        calibration_path=str(calib_npz),
    )
    assert result.metrics["target_met"] is True
    assert result.metrics["task"] == "tensor"
    assert {c["name"] for c in result.metrics["candidates"]} == set(params.candidates)
    assert all("latency_ratio" in c for c in result.metrics["candidates"])
    assert _ops(result.output_path)["MatMulInteger"] > 0
    assert stages[0] == "calibrate" and stages[-1] == "done"
    assert any("fidelity" not in line and "latency" in line for line in result.log)


def test_it_measures_embeddings_when_the_model_has_a_tokenizer(tmp_path: Path) -> None:
    hf = build_tiny_hf_dir(tmp_path / "hf", hidden=HIDDEN)
    model = build_tiny_bert_onnx(tmp_path / "m" / "model.onnx", hidden=HIDDEN)
    (model.parent / "tokenizer.json").write_bytes((hf / "tokenizer.json").read_bytes())
    params = AutoInt8Params(
        nn_agreement_min=0.0,
        cosine_mean_min=0.9,
        candidates=("dynamic-per-channel",),
        eval_samples=20,
        calibration_samples=10,
        latency_rounds=1,
    )
    result = quantize_int8_auto(str(model), str(tmp_path / "out"), params)
    assert result.metrics["task"] == "embedding"
    assert set(result.metrics["fidelity"]) >= {"cosine_mean", "cosine_min", "nn_agreement"}
    assert result.pipeline == {"pooling": "mean", "normalize": True}
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_it_refuses_to_ship_when_no_candidate_meets_the_target(
    tiny: Path, calib_npz: Path, tmp_path: Path
) -> None:
    params = AutoInt8Params(
        tensor_rel_error_max=0.0, candidates=("dynamic-per-channel",), latency_rounds=1
    )
    with pytest.raises(FidelityTargetError) as err:
        quantize_int8_auto(str(tiny), str(tmp_path), params, calibration_path=str(calib_npz))
    assert err.value.candidates[0]["name"] == "dynamic-per-channel"
    assert not list(tmp_path.glob("*.onnx")), "nothing partial is left behind"


def test_it_rejects_unknown_auto_candidates(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="unknown candidates"):
        quantize_int8_auto(str(tiny), str(tmp_path), AutoInt8Params(candidates=("nope",)))


def test_it_runs_a_recipe_in_a_subprocess(tiny: Path, tmp_path: Path) -> None:
    seen: list[float] = []
    result = run_in_subprocess(
        "onnx-int8-dynamic",
        {"model_path": str(tiny), "output_dir": str(tmp_path), "params": {"per_channel": True}},
        timeout=120,
        progress=lambda f, s, m: seen.append(f),
    )
    assert Path(result["output_path"]).is_file()
    assert result["recipe"] == "onnx-int8-dynamic"
    assert seen and seen[-1] == 1.0


def test_it_reports_the_converter_message_when_the_subprocess_dies() -> None:
    with pytest.raises(ConverterCrashError) as err:
        run_in_subprocess("crash-for-test", {"mode": "abort", "message": "out of arena"}, 60)
    assert "converter: out of arena" in str(err.value)
    assert "signal" in str(err.value)
    assert "out of arena" in err.value.stderr_tail


def test_it_reports_a_python_error_raised_in_the_subprocess() -> None:
    with pytest.raises(ConverterCrashError, match="RuntimeError: tensor shapes disagree"):
        run_in_subprocess("crash-for-test", {"message": "tensor shapes disagree"}, 60)


def test_it_reports_a_failing_recipe_with_its_error(tmp_path: Path) -> None:
    with pytest.raises(ConverterCrashError, match="QuantizeError: model not found"):
        run_in_subprocess(
            "onnx-int8-dynamic",
            {"model_path": str(tmp_path / "missing.onnx"), "output_dir": str(tmp_path)},
            60,
        )


def test_it_kills_a_converter_that_runs_too_long() -> None:
    with pytest.raises(ConverterTimeoutError):
        run_in_subprocess("crash-for-test", {"mode": "sleep"}, timeout=2)


def test_it_benchmarks_in_a_fresh_process(tiny: Path) -> None:
    report = benchmark_model(tiny, sequences=(16,), runs=3, throughput_batch=4)
    assert report["latency_batch1"]["16"]["p50_ms"] > 0
    assert report["throughput_items_per_s"] > 0
    assert report["peak_rss_bytes"] > 0
    assert report["size_bytes"] == tiny.stat().st_size


def test_it_compares_latency_of_models_interleaved(tiny: Path, tmp_path: Path) -> None:
    q = quantize_int8_dynamic(str(tiny), str(tmp_path)).output_path
    med = compare_latency([tiny, q], rounds=2, per_round=2)
    assert set(med) == {str(tiny), q} and all(v > 0 for v in med.values())


def test_it_exports_a_hugging_face_folder_to_onnx(tmp_path: Path) -> None:
    import torch
    import transformers

    from compression.pipeline.export_onnx import ExportError, export_onnx

    hf = build_tiny_hf_dir(tmp_path / "hf")
    result = export_onnx(str(hf), str(tmp_path / "out"))
    assert result.pipeline["pooling"] == "mean" and result.pipeline["output"] == "last_hidden_state"
    feed = bert_feed(batch=2, seq=6, vocab=20)
    model = transformers.AutoModel.from_pretrained(str(hf), attn_implementation="eager")
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(_run(result.output_path, feed), ref, atol=1e-4)
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    (hf / "config.json").unlink()
    with pytest.raises(ExportError, match=r"config\.json"):
        export_onnx(str(hf), str(tmp_path / "out2"))


def test_it_reads_model_inputs_for_calibration(tiny: Path, calib_npz: Path) -> None:
    feeds = quantize.calibration_feeds(tiny, str(calib_npz), None, 128, 5)
    assert len(feeds) == 5 and feeds[0]["input_ids"].shape == (1, 12)


class _Cancelled(Exception):
    pass


def test_it_stops_the_converter_when_the_job_is_cancelled(tiny: Path, tmp_path: Path) -> None:
    def cancel(fraction: float, stage: str, message: str) -> None:
        raise _Cancelled

    with pytest.raises(_Cancelled):
        run_in_subprocess(
            "onnx-int8-dynamic",
            {"model_path": str(tiny), "output_dir": str(tmp_path)},
            timeout=120,
            progress=cancel,
        )


def test_it_selects_the_fastest_then_smallest_then_most_faithful_candidate() -> None:
    def row(name: str, lat: float, size: int, cos: float, passed: bool = True) -> dict:
        fid = {"cosine_mean": cos}
        return {
            "name": name,
            "latency_ratio": lat,
            "size_bytes": size,
            "fidelity": fid,
            "passed": passed,
        }

    rows = [
        row("slow", 0.90, 100_000, 0.9999),
        row("fast-big", 0.70, 200_000, 0.999),
        row("fast-small", 0.71, 100_000, 0.998),
        row("fast-small-better", 0.715, 100_500, 0.9985),
        row("fastest-failing", 0.50, 50, 0.9, passed=False),
    ]
    assert auto_int8_search._select(rows)["name"] == "fast-small-better"
    assert auto_int8_search._select([r for r in rows if not r["passed"]]) is None


def test_a_candidate_leaves_the_nodes_it_names_in_float(
    tiny: Path, calib_npz: Path, tmp_path: Path
) -> None:
    """keep_fp32_nodes (bench/int8_ceiling.py): exactly those MatMuls stay float."""
    from dataclasses import replace

    from compression.pipeline.auto_int8.graph import build_candidate

    model = onnx.load(str(tiny))
    arrays = np.load(calib_npz)
    feeds = [{k: arrays[k][i : i + 1] for k in arrays.files} for i in range(6)]
    absmax, sensitivity = activation_absmax(model, feeds)
    base = next(c for c in auto_int8.DEFAULT_CANDIDATES if c.name == "dynamic-per-channel")
    keep = sorted(sensitivity)[:3]
    plain, kept = tmp_path / "plain.onnx", tmp_path / "kept.onnx"
    build_candidate(base, model, absmax, sensitivity, plain)
    build_candidate(replace(base, keep_fp32_nodes=tuple(keep)), model, absmax, sensitivity, kept)
    float_names = {n.name for n in onnx.load(str(kept)).graph.node if n.op_type == "MatMul"}
    assert set(keep) <= float_names
    assert _ops(kept)["MatMulInteger"] == _ops(plain)["MatMulInteger"] - 3


def test_embedding_rows_gives_each_table_row_its_own_int8_scale(tmp_path: Path) -> None:
    """One huge row no longer coarsens every other row: after ``embedding_rows`` each
    gathered row is within half its own step of the float row."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compression.pipeline.auto_int8.graph import embedding_rows

    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.02, (50, 16)).astype(np.float32)
    table[7] *= 100  # a rare token with a large vector
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], name="lookup")],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 16])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(float_path))
    quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8)
    ids = np.arange(50, dtype=np.int64)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"ids": ids})[0])

    per_table = np.abs(run(int8_path) - table).max(axis=1)
    quantized = onnx.load(str(int8_path))
    assert embedding_rows(quantized, model) == 1
    rows_path = tmp_path / "rows.onnx"
    onnx.save(quantized, str(rows_path))
    per_row = np.abs(run(rows_path) - table).max(axis=1)
    step = np.abs(table).max(axis=1) / 127
    assert (per_row <= step / 2 + 1e-7).all()
    others = np.arange(50) != 7
    assert per_row[others].mean() < per_table[others].mean() / 10
