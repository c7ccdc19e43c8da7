"""TFLite rows of bench/compression.py: the `tflite` recipe's variants of MiniLM on
ai-edge-litert, and the dynamic int8 file on tflite-runtime 2.14.

tflite-runtime 2.14 needs numpy<2, which the project venv cannot hold, so it runs in a
side venv created under /tmp (`python3.11 -m venv` + pip install tflite-runtime==2.14.0
'numpy<2' tokenizers) and is driven through a small script: embeddings and timings come
back as a .npz file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.benchmark import benchmark_model, compare_latency, synthetic_feeds
from compression.pipeline.evaluate import embedding_fidelity, open_session
from compression.pipeline.textdata import encode
from compression.pipeline.tflite_export import TfliteParams, export_tflite, quantize_variant
from compression.pipeline.tflite_session import TfliteSession

SIDE_VENV = Path("/tmp/tinyfleet-tflite-runtime-venv")
SIDE_PACKAGES = ("tflite-runtime==2.14.0", "numpy<2", "tokenizers")
SEQ = 128

# Run inside the side venv: batch-1 embeddings of every sentence, then latency.
_SIDE_SCRIPT = """
import json, resource, sys, time
import numpy as np
from tflite_runtime.interpreter import Interpreter
from tokenizers import Tokenizer
model, tokenizer, texts_file, out = sys.argv[1:5]
texts = json.load(open(texts_file))
tok = Tokenizer.from_file(tokenizer)
tok.no_padding(); tok.enable_truncation(128)
start = time.perf_counter()
it = Interpreter(model_path=model, num_threads=1)
it.allocate_tensors()
load_s = time.perf_counter() - start
ins = {d["name"].split("serving_default_")[-1].split(":")[0]: d for d in it.get_input_details()}
seq = int(ins["input_ids"]["shape"][1])
def run(ids):
    feed_ids = np.zeros((1, seq), np.int32); feed_ids[0, :len(ids)] = ids[:seq]
    mask = np.zeros((1, seq), np.int32); mask[0, :len(ids)] = 1
    it.set_tensor(ins["input_ids"]["index"], feed_ids)
    it.set_tensor(ins["attention_mask"]["index"], mask)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])[0]
vectors = np.stack([run(tok.encode(t).ids) for t in texts])
ids = tok.encode(texts[0]).ids
for _ in range(3): run(ids)
samples = []
for _ in range(30):
    t0 = time.thread_time(); run(ids); samples.append(time.thread_time() - t0)
rss = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
np.savez(out, vectors=vectors, latency_s=np.median(samples), load_s=load_s, rss_kb=int(rss))
"""


def build_variants(model_dir: Path, work: Path) -> dict[str, Path]:
    """fp32 through the recipe, then both quantized variants of that same float file."""
    started = time.perf_counter()
    fp32 = Path(
        export_tflite(str(model_dir), str(work / "tfl-fp32"), TfliteParams("fp32")).output_path
    )
    print(f"tflite fp32 conversion: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    out = {"tflite fp32 (LiteRT)": fp32}
    for variant in ("dynamic-int8", "weight-only-int8"):
        target = work / f"tfl-{variant}" / "model.tflite"
        target.parent.mkdir(parents=True, exist_ok=True)
        quantize_variant(fp32, target, variant)
        out[f"tflite {variant} (LiteRT)"] = target
    return out


def litert_embeddings(model: Path, tokenizer: Path, texts: list[str]) -> np.ndarray:
    """One sentence per call, padded to the fixed length by the session, as the agent does."""
    session = TfliteSession(model)
    enc = encode(tokenizer, texts, max_length=SEQ)
    rows = [enc.row(i) for i in range(len(texts))]
    return np.concatenate(
        [
            session.run(None, {"input_ids": r.input_ids, "attention_mask": r.attention_mask})[0]
            for r in rows
        ]
    )


def measure_litert(
    variants: dict[str, Path],
    onnx_fp32: Path,
    tokenizer: Path,
    texts: list[str],
    ref: np.ndarray,
    rounds: int,
) -> list[dict[str, Any]]:
    """Fidelity, interleaved CPU-time latency at seq 128 (with the fp32 ONNX export timed
    alongside for a cross-runtime ratio), and a fresh-process benchmark per variant."""
    paths = [onnx_fp32, *variants.values()]
    feeds = synthetic_feeds(open_session(onnx_fp32, 1), 1, SEQ)
    latency = compare_latency(paths, feeds=feeds, rounds=rounds, cpu_time=True)
    litert_fp32 = latency[str(paths[1])]
    rows = []
    for label, path in variants.items():
        fidelity = embedding_fidelity(ref, litert_embeddings(path, tokenizer, texts))
        bench = benchmark_model(path, runs=20, throughput_batch=32)
        rows.append(
            {
                "label": label,
                "size_mb": path.stat().st_size / 1e6,
                "cosine_mean": fidelity.cosine_mean,
                "cosine_min": fidelity.cosine_min,
                "nn_agreement": fidelity.nn_agreement,
                "latency_ms": latency[str(path)] * 1e3,
                "vs_litert_fp32": latency[str(path)] / litert_fp32,
                "vs_onnx_fp32": latency[str(path)] / latency[str(onnx_fp32)],
                "throughput": bench["throughput_items_per_s"],
                "peak_rss_mb": bench["peak_rss_bytes"] / 1e6,
                "load_s": bench["load_s"],
            }
        )
    rows.append(
        {"label": "export-onnx fp32 at seq 128", "latency_ms": latency[str(onnx_fp32)] * 1e3}
    )
    return rows


def ensure_side_venv() -> Path:
    python = SIDE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(SIDE_VENV)], check=True)
    subprocess.run([str(SIDE_VENV / "bin" / "pip"), "install", "-q", *SIDE_PACKAGES], check=True)
    return python


def measure_tflite_runtime(
    model: Path, tokenizer: Path, texts: list[str], ref: np.ndarray, work: Path
) -> dict[str, Any]:
    """The same file on tflite-runtime 2.14; fidelity reported as measured, however bad."""
    python = ensure_side_venv()
    texts_file, out = work / "texts.json", work / "tflite-runtime.npz"
    texts_file.write_text(json.dumps(texts))
    script = work / "side.py"
    script.write_text(_SIDE_SCRIPT)
    subprocess.run(
        [str(python), str(script), str(model), str(tokenizer), str(texts_file), str(out)],
        check=True,
        timeout=1800,
    )
    with np.load(out) as result:
        fidelity = embedding_fidelity(ref, result["vectors"])
        return {
            "label": f"{model.parent.name.removeprefix('tfl-')} on tflite-runtime 2.14",
            "size_mb": model.stat().st_size / 1e6,
            "cosine_mean": fidelity.cosine_mean,
            "cosine_min": fidelity.cosine_min,
            "nn_agreement": fidelity.nn_agreement,
            "latency_ms": float(result["latency_s"]) * 1e3,
            "peak_rss_mb": int(result["rss_kb"]) / 1e3,
            "load_s": float(result["load_s"]),
        }


def render(rows: list[dict[str, Any]], side: dict[str, Any] | None) -> list[str]:
    onnx = rows[-1]
    lines = [
        "## TFLite variants (the `tflite` recipe) on ai-edge-litert and tflite-runtime",
        "",
        "Fixed shape [1, 128] int32, additive mask, mean pooling and L2 norm inside the graph. "
        "Fidelity against the same fp32 PyTorch embeddings, one sentence per call padded to "
        "128 (what a device runs). Latency: batch 1, the fixed sequence 128, one thread, CPU "
        "time, all LiteRT variants and the fp32 ONNX export (at seq 128, "
        f"{onnx['latency_ms']:.1f} ms) interleaved in one process, medians. Throughput "
        "(batch 32 = 32 sequential calls of the batch-1 graph), peak RSS and load time: "
        "fresh subprocess per model.",
        "",
        "| variant | size MB | cos mean | cos min | NN agree | latency ms | vs LiteRT fp32 "
        "| vs ONNX fp32 @128 | items/s | peak RSS MB | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows[:-1]:
        lines.append(
            f"| {r['label']} | {r['size_mb']:.1f} | {r['cosine_mean']:.5f} | "
            f"{r['cosine_min']:.4f} | {100 * r['nn_agreement']:.1f}% | {r['latency_ms']:.1f} | "
            f"{r['vs_litert_fp32']:.3f} | {r['vs_onnx_fp32']:.3f} | {r['throughput']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['load_s']:.2f} |"
        )
    if side is not None:
        lines.append(
            f"| {side['label']} | {side['size_mb']:.1f} | {side['cosine_mean']:.5f} | "
            f"{side['cosine_min']:.4f} | {100 * side['nn_agreement']:.1f}% | "
            f"{side['latency_ms']:.1f} | | | | {side['peak_rss_mb']:.0f} | {side['load_s']:.2f} |"
        )
        lines += [
            "",
            "tflite-runtime 2.14 runs in a side venv (it needs numpy<2); its latency is timed "
            "in that process, not interleaved. It loads the dynamic int8 file without any "
            "error and returns the numbers above: the golden-set self-test is what stops "
            "such a device from serving it.",
        ]
    else:
        lines += ["", "tflite-runtime 2.14: not measured (`--skip-tflite-runtime`)."]
    return [*lines, ""]
