"""The signed bundle record of a version, built from loaded rows without I/O.

`build_record` turns a Bundle (with its version and model loaded), the cipher parameters
and what the payload scan found into the `BundleRecord` the image repository signs; the
operator's labels / threshold are checked here with the device's own rules.
Both sides of publishing use it: the request (`publish`) and the worker (`publish_worker`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from django.conf import settings
from tinyfleet_agent.protocol import (
    BundleRecord,
    CipherParams,
    InvalidRecordError,
    PipelineSpec,
    canonical_json,
)

from compression.models import Format, ModelVersion
from fleet.models import Bundle
from fleet.security.payload import PayloadInfo

RUNTIME: dict[str, str] = {Format.ONNX: "onnxruntime", Format.TFLITE: "litert"}
TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")
# Lowest onnxruntime release that implements each default-domain opset.
_ORT_FOR_OPSET = {18: "1.14", 19: "1.16", 20: "1.17", 21: "1.18", 22: "1.20", 23: "1.22"}
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_PROVENANCE_BUDGET = 30 * 1024  # under the agent's 32 KiB cap, with room to spare


class PublishError(Exception):
    """The version cannot be published; the message tells the operator why."""


def model_slug(name: str) -> str:
    """The record's model name: what devices key release counters by."""
    return _SLUG.sub("-", name).strip("-._")[:128] or "model"


def _min_runtime(fmt: str, info: PayloadInfo) -> str:
    floor = settings.BUNDLE_MIN_RUNTIME[RUNTIME[fmt]]
    opset = info.opset_imports.get("ai.onnx", info.opset_imports.get("", 0))
    needed = _ORT_FOR_OPSET.get(min(opset, max(_ORT_FOR_OPSET)), "0") if opset >= 18 else "0"

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    return max(floor, needed, key=key)


CLASSIFIER_TASKS = ("text-classification", "token-classification")


def inherited_labels(version: ModelVersion) -> list[str]:
    """Class names from the version's pipeline, else from the nearest ancestor whose
    inspection read them from a Hugging Face config.json (`id2label`)."""
    if labels := (version.pipeline or {}).get("labels"):
        return [str(label) for label in labels]
    node: ModelVersion | None = version
    for _ in range(32):  # lineage depth cap: a cycle cannot hang publishing
        if node is None:
            break
        if labels := (node.inspection or {}).get("labels"):
            return [str(label) for label in labels]
        node = node.parent
    return []


def _output_classes(version: ModelVersion) -> int | None:
    """How many classes the first output has (its last dimension), when known."""
    outputs = (version.inspection or {}).get("outputs") or []
    shape = outputs[0].get("shape") if outputs and isinstance(outputs[0], dict) else None
    last = shape[-1] if isinstance(shape, list) and shape else None
    return last if isinstance(last, int) and last > 0 else None


def publish_overrides(
    version: ModelVersion, labels: list[str] | None, confidence_threshold: float | None
) -> dict[str, Any]:
    """Check operator-given labels / threshold for `version`; returns what to store.

    Raises:
        PublishError: not a classifier, a label count that differs from the model's
            outputs, or values devices would refuse.
    """
    if labels is None and confidence_threshold is None:
        return {}
    task = version.model.task
    if task not in CLASSIFIER_TASKS:
        raise PublishError(f"labels and confidence_threshold are for classifiers; {task} is not")
    overrides: dict[str, Any] = {}
    if labels is not None:
        overrides["labels"] = [
            label.strip() if isinstance(label, str) else label for label in labels
        ]
        classes = _output_classes(version)
        if classes is not None and len(labels) != classes:
            raise PublishError(f"{len(labels)} labels given, but the model has {classes} classes")
    if confidence_threshold is not None:
        overrides["confidence_threshold"] = float(confidence_threshold)
    try:  # the device's own rules, so a bundle is never built with values it refuses
        PipelineSpec(
            task=task,
            tokenizer="tokenizer.json",
            max_seq_len=128,
            pooling="none",
            normalize=False,
            labels=tuple(overrides.get("labels") or ()),
            confidence_threshold=overrides.get("confidence_threshold"),
        )
    except InvalidRecordError as exc:
        raise PublishError(str(exc)) from None
    return overrides


def pipeline_spec(
    version: ModelVersion, has_tokenizer: bool, overrides: dict[str, Any] | None = None
) -> PipelineSpec:
    """The record's I/O spec from the model's task, the version's pipeline (labels also
    from its HF config) and the operator's `overrides`.

    Raises:
        PublishError: a text task without tokenizer.json.
        InvalidRecordError: the version's pipeline holds values devices refuse.
    """
    task, p = version.model.task, {**(version.pipeline or {}), **(overrides or {})}
    text = task in TEXT_TASKS
    if text and not has_tokenizer:
        raise PublishError(f"{version} is a {task} model but its artifact has no tokenizer.json")
    embedding = task == "text-embedding"
    threshold = p.get("confidence_threshold")
    return PipelineSpec(
        task=task,
        tokenizer="tokenizer.json" if text else None,
        max_seq_len=int(p.get("max_seq_len") or 128),
        pooling=str(p.get("pooling") or ("mean" if embedding else "none")),
        normalize=bool(p.get("normalize", embedding)),
        labels=tuple(str(label) for label in p.get("labels") or inherited_labels(version)),
        confidence_threshold=None if threshold is None else round(float(threshold), 6),
    )


def _signable(value: Any, depth: int = 0) -> Any:
    """JSON the image repository can sign: no floats (as strings), bounded depth."""
    if depth > 12:
        return str(value)[:200]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _signable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_signable(v, depth + 1) for v in value]
    return str(value)


def provenance(version: ModelVersion) -> dict[str, Any]:
    """Parent chain, recipe, datasets and measured metrics, trimmed to fit the record."""
    lineage = version.lineage_info or {}
    chain = lineage.get("parent_chain") or [
        {"id": v.pk, "sha256": v.sha256, "recipe": v.recipe or "upload"} for v in version.lineage()
    ]
    full = {
        "version_id": version.pk,
        "version_sha256": version.sha256,
        "format": version.format,
        "recipe": version.recipe or "upload",
        "parent_chain": chain[-20:],
        "datasets": lineage.get("datasets", {}),
        "params": version.params,
        "libraries": lineage.get("libraries", {}),
        "metrics": version.metrics,
    }
    prov = _signable(full)
    # Drop the least essential parts first until the record fits on small devices.
    for key in ("libraries", "params", "metrics", "datasets", "parent_chain"):
        if len(canonical_json(prov)) <= _PROVENANCE_BUDGET:
            break
        prov[key] = "omitted: too large for the signed record"
    return dict(prov)


def build_record(bundle: Bundle, params: CipherParams, info: PayloadInfo) -> BundleRecord:
    version = bundle.version
    return BundleRecord(
        bundle_id=bundle.pk,
        model=bundle.model,
        version=f"v{version.number}",
        release=bundle.release,
        runtime=RUNTIME[version.format],
        min_runtime_version=_min_runtime(version.format, info),
        arch=tuple(dict.fromkeys(version.pipeline.get("arch") or settings.BUNDLE_ARCH)),
        pipeline=pipeline_spec(version, info.has_tokenizer, bundle.pipeline_overrides),
        cipher=params,
        golden_set_sha256=version.golden_sha256,
        provenance=provenance(version),
    )
