"""Variant test helpers: ONNX and TFLite bundles of one model, a mixed group of devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.models import Bundle, Group
from tests.fleet.publish_helpers import (
    TestDevice,
    make_device,
    make_version,
    onnx_files,
    publish_now,
    tflite_files,
)

MODEL = "sensor"


KINDS: dict[str, dict[str, Any]] = {
    "onnx": {"arch": "x86_64", "runtimes": {"onnxruntime": "1.31.1"}},
    "litert": {"arch": "aarch64", "runtimes": {"litert": "2.3.0"}},
    "both": {"arch": "x86_64", "runtimes": {"onnxruntime": "1.31.1", "litert": "2.3.0"}},
    "armv7": {"arch": "armv7l", "runtimes": {"onnxruntime": "1.31.1"}},
    "old-ort": {"arch": "x86_64", "runtimes": {"onnxruntime": "1.10.0"}},
    "tflite-rt": {"arch": "aarch64", "runtimes": {"tflite-runtime": "2.14.0"}},
}


def onnx_bundle(tmp_path: Path, model: str = MODEL) -> Bundle:
    folder = tmp_path / f"onnx-{Bundle.objects.count()}"
    folder.mkdir(parents=True)
    return publish_now(make_version(onnx_files(folder, tokenizer=False), name=model, task="tensor"))


def tflite_bundle(tmp_path: Path, model: str = MODEL) -> Bundle:
    folder = tmp_path / f"tflite-{Bundle.objects.count()}"
    folder.mkdir(parents=True)
    return publish_now(make_version(tflite_files(folder), name=model, task="tensor", fmt="tflite"))


def mixed_group(counts: dict[str, int]) -> tuple[Group, dict[str, list[TestDevice]]]:
    group = Group.objects.create(name="mixed", selector="site=mixed")
    fleet: dict[str, list[TestDevice]] = {}
    for kind, count in counts.items():
        for i in range(count):
            dev = make_device(f"{kind}-{i}", facts=KINDS[kind])
            dev.device.labels = {"site": "mixed"}
            dev.device.save()
            fleet.setdefault(kind, []).append(dev)
    return group, fleet
