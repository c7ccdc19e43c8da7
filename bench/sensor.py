"""Benchmark the ``sensor-transformer`` recipe on real data; writes bench/reports/sensor.md.

    python bench/sensor.py [--work-dir DIR] [--threads 1]

Classification: BasicMotions (UEA archive, sktime 1.2.0's copy: 6-channel accelerometer
and gyroscope, 4 activities, 40 training and 40 test windows of 100 steps) trained from
scratch with the recipe's default parameters, accuracy of the float PyTorch model, the
float ONNX export and the full-int8 model on the TFLite Micro interpreter, side by side
on the 40 test windows; flash (the .tflite a firmware embeds), the exact tensor arena,
TFLM latency on this host, training wall and CPU time.

Anomaly: KDD-TSAD 135 (UCR anomaly archive, aeon 1.6.0's copy: InternalBleeding16, 1200
normal training steps, a 12-step anomaly later in the 7501-step series). The model
forecasts 8 steps from 56; the threshold is the largest forecast error on the last 25%
of the training stream (not trained on). Evaluated on the test stream after the
training part, per 8-step block, against a moving-window z-score calibrated by the same
rule. A margin sweep over both methods' thresholds shows the sensitivity (it reads the
test labels: an oracle view, not a tuning the recipe does).

Every number is from the converter subprocess a job runs (compression.pipeline.runner).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from compression.pipeline.runner import run_in_subprocess  # noqa: E402
from compression.pipeline.sensor.metrics import detection_report  # noqa: E402
from tests.fixtures.sensor_data import basic_motions, kdd_tsad  # noqa: E402

REPORT = ROOT / "bench" / "reports" / "sensor.md"
TRAIN_STEPS = 1200
MARGINS = (1.0, 1.5, 2.0, 3.0, 4.0)


def _classification(work: Path, threads: int) -> dict[str, Any]:
    train, test = basic_motions()
    started = time.perf_counter()
    result = run_in_subprocess(
        "sensor-transformer",
        {
            "spec_path": str(train),
            "output_dir": str(work / "basic-motions"),
            "params": {"threads": threads},
            "train_path": str(train),
            "eval_path": str(test),
        },
        timeout=1800,
    )
    metrics: dict[str, Any] = result["metrics"]
    metrics["job_seconds"] = time.perf_counter() - started
    return metrics


def _test_tail(work: Path, test: Path, window: int) -> Path:
    """The test stream after the training part (plus one window of context)."""
    rows = test.read_text().splitlines()
    tail = work / "kdd-tsad-135-test-tail.csv"
    tail.write_text("\n".join([rows[0], *rows[1 + TRAIN_STEPS - window :]]) + "\n")
    return tail


def _anomaly(work: Path, threads: int) -> dict[str, Any]:
    train, test = kdd_tsad()
    started = time.perf_counter()
    result = run_in_subprocess(
        "sensor-transformer",
        {
            "spec_path": str(train),
            "output_dir": str(work / "kdd-tsad"),
            "params": {"task": "anomaly", "keep_scores": True, "threads": threads, "epochs": 60},
            "train_path": str(train),
            "eval_path": str(_test_tail(work, test, 64)),
        },
        timeout=1800,
    )
    metrics: dict[str, Any] = result["metrics"]
    metrics["job_seconds"] = time.perf_counter() - started
    return metrics


def _sweep(found: dict[str, Any]) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
    labels = np.asarray(found["labels"], dtype=bool)
    model, base = np.asarray(found["scores"]), np.asarray(found["baseline_scores"])
    model_bound = max(found["calibration_scores"])
    base_bound = max(found["baseline_calibration_scores"])
    return [
        (
            margin,
            detection_report(labels, model > model_bound * margin),
            detection_report(labels, base > base_bound * margin),
        )
        for margin in MARGINS
    ]


def _machine() -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("torch", "litert-torch", "ai-edge-quantizer", "tflite-micro", "onnxruntime")
    )
    load = os.getloadavg()[0]
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with "
        f"~7 engineers' jobs (load average {load:.1f} at the end of the run), "
        f"Python {platform.python_version()}; {versions}."
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _classification_md(m: dict[str, Any]) -> list[str]:
    acc, ev = m["accuracy"], m["evaluation"]
    lat = m["tflm_latency"]
    per_class = ev["tflm_int8"]["per_class"]
    matrix = ev["tflm_int8"]["confusion_matrix"]
    classes = ev["tflm_int8"]["classes"]
    lines = [
        "## BasicMotions classification (target: >= 97.5%, <= 64 KB flash, <= 32 KB arena)",
        "",
        "| model | test accuracy | balanced |",
        "|---|---|---|",
        *(
            f"| {name} | {_pct(acc[key])} | {_pct(ev[key]['balanced_accuracy'])} |"
            for name, key in (
                ("float (PyTorch)", "float"),
                ("float ONNX", "onnx"),
                ("full int8, TFLite Micro", "tflm_int8"),
            )
        ),
        "",
        f"- int8 vs float: {_pct(ev['int8_float_agreement'])} of the test windows get the "
        f"same class; accuracy difference {100 * (acc['tflm_int8'] - acc['float']):+.1f} points.",
        f"- Parameters: {m['parameters']:,}; int8 .tflite (flash): {m['flash_bytes']:,} bytes "
        f"({m['flash_bytes'] / 1024:.1f} KB); float ONNX {m['onnx_bytes']:,} bytes.",
        f"- Tensor arena (measured exact on the TFLM interpreter, runs in it, fails 16 bytes "
        f"below): {m['arena_bytes']:,} bytes ({m['arena_bytes'] / 1024:.1f} KB); "
        f"print_allocations() reported {m['arena_reported_bytes']:,}.",
        f"- TFLM invoke() on this host (reference kernels, relative only): p50 "
        f"{lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms.",
        f"- Training: {m['training']['epochs']} epochs, {m['training']['seconds']:.0f} s wall, "
        f"{m['training']['cpu_seconds']:.0f} s CPU on {m['training']['threads']} thread; the "
        f"whole recipe (training, ONNX, litert-torch, int8, arena, evaluation) "
        f"{m['job_seconds']:.0f} s wall.",
        "",
        "Per class (int8 on TFLM) and confusion matrix (rows true, columns predicted):",
        "",
        "| class | support | accuracy | " + " | ".join(classes) + " |",
        "|---|---|---|" + "---|" * len(classes),
        *(
            f"| {c} | {per_class[c]['support']} | {_pct(per_class[c]['accuracy'])} | "
            + " | ".join(str(v) for v in row)
            + " |"
            for c, row in zip(classes, matrix, strict=True)
        ),
        "",
    ]
    return lines


def _anomaly_md(m: dict[str, Any]) -> list[str]:
    a = m["anomaly"]
    rows = [("forecasting Transformer, int8 on TFLM", "tflm_int8")]
    rows += [("same model, float", "float"), ("moving-window z-score baseline", "zscore_baseline")]
    lines = [
        "## KDD-TSAD 135 anomaly detection (target: beat the z-score baseline on F1)",
        "",
        f"{a['blocks']} test blocks of 8 steps, {a['anomalous_blocks']} anomalous; threshold = "
        f"the largest score on {a['calibration_windows']} held-out normal windows (margin 1).",
        "",
        "| detector | threshold | flagged | precision | recall | F1 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {a[key]['threshold']:.4g} | {a[key]['flagged']} | "
            f"{a[key]['precision']:.3f} | {a[key]['recall']:.3f} | {a[key]['f1']:.3f} |"
            for name, key in rows
        ),
        "",
        "Margin sweep (threshold x margin, both detectors; reads the test labels, so an "
        "oracle view of the sensitivity, not a tuning the recipe does):",
        "",
        "| margin | model P / R / F1 | z-score P / R / F1 |",
        "|---|---|---|",
        *(
            f"| {margin:g} | {mod['precision']:.2f} / {mod['recall']:.2f} / {mod['f1']:.2f} | "
            f"{base['precision']:.2f} / {base['recall']:.2f} / {base['f1']:.2f} |"
            for margin, mod, base in _sweep(a)
        ),
        "",
        f"- int8 .tflite {m['flash_bytes']:,} bytes, arena {m['arena_bytes']:,} bytes, TFLM "
        f"p50 {m['tflm_latency']['p50_ms']:.2f} ms per forecast.",
        f"- Training: {m['training']['epochs']} epochs on {m['training']['windows']} windows, "
        f"{m['training']['seconds']:.0f} s wall, {m['training']['cpu_seconds']:.0f} s CPU; whole "
        f"recipe {m['job_seconds']:.0f} s wall.",
        "",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        classification = _classification(work, args.threads)
        anomaly = _anomaly(work, args.threads)
    lines = [
        "# Sensor models: tiny Transformers trained from scratch, int8, TFLite Micro",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python bench/sensor.py`. "
        f"{_machine()} Times are wall clock on a loaded machine; CPU seconds are the "
        "steadier figure.",
        "",
        *_classification_md(classification),
        *_anomaly_md(anomaly),
    ]
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
