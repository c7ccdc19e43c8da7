"""The bundle record: the signed custom fields of a bundle's TUF target.

One record travels from compression to the device: what the model is, which
runtime and CPUs can run it, how to feed it, how its payload is encrypted and
where it came from. Validation is strict (types, patterns, size caps, no
unknown fields) because the device decides what to install from it.

TUF signs canonical JSON that has no floating-point numbers, so nothing in a
record may be a JSON float: the confidence threshold travels as a decimal
string, and provenance must carry measured numbers as strings or scaled ints.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRecordError
from .limits import DEFAULT_LIMITS, Limits
from .stream_aead import CipherParams

__all__ = [
    "NAMESPACE",
    "POOLINGS",
    "RUNTIMES",
    "BundleRecord",
    "PipelineSpec",
    "canonical_json",
    "director_target_custom",
    "image_target_custom",
    "record_of_target",
    "strip_director_fields",
]

RECORD_SCHEMA = 1
# Key of our namespace inside a TUF target's `custom` (image and director).
NAMESPACE = "tinyfleet"
# Fields only the director adds; everything else must equal the image target.
DIRECTOR_ONLY_FIELDS = ("device_id", "wrapped_key")
RUNTIMES = ("onnxruntime", "litert", "tflite-runtime")
POOLINGS = ("mean", "cls", "max", "none")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Exporters name outputs freely ("onnx::Shape_422", "save_infer_model/scale_0.tmp_1").
_OUTPUT_NAME = re.compile(r"[A-Za-z0-9_:./-][A-Za-z0-9_:./ -]{0,199}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_RUNTIME_VERSION = re.compile(r"\d{1,6}(\.\d{1,6}){0,3}")
_ARCH = re.compile(r"[a-z0-9_]{1,32}")
_TASK = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_THRESHOLD = re.compile(r"[01](\.\d{1,6})?")
_MAX_ARCHES = 16
_MAX_LABELS = 4096
_MAX_LABEL_CHARS = 256
_MAX_SEQ_LEN = 1 << 16
_MAX_RELEASE = 1 << 53
_MAX_JSON_DEPTH = 16


def canonical_json(obj: Any) -> bytes:
    """Return deterministic UTF-8 JSON: sorted keys, no spaces, no NaN.

    Raises:
        ValueError: `obj` holds NaN/inf or a value JSON cannot encode.
        TypeError: `obj` holds a non-JSON type.
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _fail(message: str) -> InvalidRecordError:
    return InvalidRecordError(message)


def _check_str(name: str, value: object, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(f"{name} is missing or malformed")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise _fail(f"{name} must be an integer in [{low}, {high}]")


def _check_json_value(value: object, depth: int = 0) -> None:
    """Accept only what TUF can sign: no floats, bounded nesting, string keys."""
    if depth > _MAX_JSON_DEPTH:
        raise _fail("provenance is nested too deeply")
    if value is None or isinstance(value, bool | str):
        return
    if type(value) is int:
        if abs(value) > _MAX_RELEASE:
            raise _fail("provenance integers must fit in 53 bits")
        return
    if isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail("provenance keys must be strings")
            _check_json_value(item, depth + 1)
        return
    raise _fail(f"provenance may not hold {type(value).__name__} (floats cannot be signed)")


def _format_threshold(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _exact_keys(name: str, data: object, required: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(f"{name} must be an object")
    if set(data) != required:
        missing, extra = required - set(data), set(data) - required
        raise _fail(f"{name} fields: missing {sorted(missing)}, unknown {sorted(extra)}")
    return data


@dataclass(frozen=True)
class PipelineSpec:
    """How the agent turns inputs into model tensors and outputs into answers.

    Raises:
        InvalidRecordError: on construction, if a field is malformed.
    """

    task: str
    tokenizer: str | None
    max_seq_len: int
    pooling: str
    normalize: bool
    labels: tuple[str, ...] = ()
    confidence_threshold: float | None = None
    # The model output to read (the server's primary output); None: the first one.
    output: str | None = None

    def __post_init__(self) -> None:
        _check_str("pipeline.task", self.task, _TASK)
        if self.output is not None:
            _check_str("pipeline.output", self.output, _OUTPUT_NAME)
        if self.tokenizer is not None:
            # A bare file name inside the bundle: never a path.
            _check_str("pipeline.tokenizer", self.tokenizer, _SLUG)
        _check_int("pipeline.max_seq_len", self.max_seq_len, 1, _MAX_SEQ_LEN)
        if self.pooling not in POOLINGS:
            raise _fail(f"pipeline.pooling must be one of {POOLINGS}")
        if not isinstance(self.normalize, bool):
            raise _fail("pipeline.normalize must be a boolean")
        self._check_labels()
        self._check_threshold()

    def _check_labels(self) -> None:
        if not isinstance(self.labels, tuple) or len(self.labels) > _MAX_LABELS:
            raise _fail(f"pipeline.labels must be a list of at most {_MAX_LABELS}")
        for label in self.labels:
            if not isinstance(label, str) or not 0 < len(label) <= _MAX_LABEL_CHARS:
                raise _fail("pipeline.labels must be non-empty short strings")

    def _check_threshold(self) -> None:
        value = self.confidence_threshold
        if value is None:
            return
        if type(value) is not float or not 0.0 <= value <= 1.0:
            raise _fail("pipeline.confidence_threshold must be a float in [0, 1]")
        if float(_format_threshold(value)) != value:
            raise _fail("pipeline.confidence_threshold allows at most 6 decimals")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (threshold as a decimal string)."""
        threshold = self.confidence_threshold
        return {
            "task": self.task,
            "tokenizer": self.tokenizer,
            "max_seq_len": self.max_seq_len,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "labels": list(self.labels),
            "confidence_threshold": None if threshold is None else _format_threshold(threshold),
            # Only when set: records without it stay byte-identical for older agents.
            **({"output": self.output} if self.output is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: object) -> PipelineSpec:
        """Parse the JSON form strictly.

        Raises:
            InvalidRecordError: unknown, missing or malformed fields.
        """
        fields = set(cls.__dataclass_fields__)
        optional = {"output"} & set(data) if isinstance(data, Mapping) else set()
        d = _exact_keys("pipeline", data, fields - {"output"} | optional)
        labels = d["labels"]
        if not isinstance(labels, list):
            raise _fail("pipeline.labels must be a list")
        threshold = d["confidence_threshold"]
        if threshold is not None:
            _check_str("pipeline.confidence_threshold", threshold, _THRESHOLD)
            threshold = float(threshold)
        return cls(
            task=d["task"],
            tokenizer=d["tokenizer"],
            max_seq_len=d["max_seq_len"],
            pooling=d["pooling"],
            normalize=d["normalize"],
            labels=tuple(labels),
            confidence_threshold=threshold,
            output=d.get("output"),
        )


@dataclass(frozen=True)
class BundleRecord:
    """Everything the image repository signs about one bundle.

    Raises:
        InvalidRecordError: on construction, if a field is malformed or the
            provenance is larger than `DEFAULT_LIMITS.max_provenance_bytes`.
    """

    bundle_id: str
    model: str
    version: str
    release: int
    runtime: str
    min_runtime_version: str
    arch: tuple[str, ...]
    pipeline: PipelineSpec
    cipher: CipherParams
    golden_set_sha256: str
    provenance: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_str("bundle_id", self.bundle_id, _SLUG)
        _check_str("model", self.model, _SLUG)
        _check_str("version", self.version, _VERSION)
        _check_int("release", self.release, 1, _MAX_RELEASE)
        if self.runtime not in RUNTIMES:
            raise _fail(f"runtime must be one of {RUNTIMES}")
        _check_str("min_runtime_version", self.min_runtime_version, _RUNTIME_VERSION)
        self._check_arch()
        if not isinstance(self.pipeline, PipelineSpec):
            raise _fail("pipeline must be a PipelineSpec")
        if not isinstance(self.cipher, CipherParams):
            raise _fail("cipher must be CipherParams")
        _check_str("golden_set_sha256", self.golden_set_sha256, _SHA256_HEX)
        self._check_provenance(DEFAULT_LIMITS)

    def _check_arch(self) -> None:
        arch = self.arch
        if not isinstance(arch, tuple) or not 0 < len(arch) <= _MAX_ARCHES:
            raise _fail(f"arch must list 1 to {_MAX_ARCHES} architectures")
        for item in arch:
            _check_str("arch", item, _ARCH)
        if len(set(arch)) != len(arch):
            raise _fail("arch entries must be unique")

    def _check_provenance(self, limits: Limits) -> None:
        if not isinstance(self.provenance, dict):
            raise _fail("provenance must be an object")
        _check_json_value(self.provenance)
        if len(canonical_json(self.provenance)) > limits.max_provenance_bytes:
            raise _fail("provenance is too large")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in the target's custom fields."""
        return {
            "schema": RECORD_SCHEMA,
            "bundle_id": self.bundle_id,
            "model": self.model,
            "version": self.version,
            "release": self.release,
            "runtime": self.runtime,
            "min_runtime_version": self.min_runtime_version,
            "arch": list(self.arch),
            "pipeline": self.pipeline.to_dict(),
            "cipher": self.cipher.to_dict(),
            "golden_set_sha256": self.golden_set_sha256,
            # A JSON round trip is a cheap deep copy that keeps callers from
            # mutating the frozen record's provenance through the dict.
            "provenance": json.loads(canonical_json(self.provenance)),
        }

    def canonical_bytes(self) -> bytes:
        """Return the canonical JSON of `to_dict()`."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: object, *, limits: Limits = DEFAULT_LIMITS) -> BundleRecord:
        """Parse and validate the JSON form strictly.

        Raises:
            InvalidRecordError: unknown, missing or malformed fields, an
                unsupported schema, or a record above `limits.max_record_bytes`.
        """
        fields = set(cls.__dataclass_fields__) | {"schema"}
        d = _exact_keys("record", data, fields)
        try:
            size = len(canonical_json(d))
        except (TypeError, ValueError, RecursionError) as e:
            raise _fail(f"record is not plain JSON: {e}") from None
        if size > limits.max_record_bytes:
            raise _fail("record is too large")
        if d["schema"] != RECORD_SCHEMA or type(d["schema"]) is not int:
            raise _fail(f"unsupported record schema {d['schema']!r}")
        arch = d["arch"]
        if not isinstance(arch, Sequence) or isinstance(arch, str):
            raise _fail("arch must be a list")
        provenance = d["provenance"]
        if not isinstance(provenance, dict):
            raise _fail("provenance must be an object")
        record = cls(
            bundle_id=d["bundle_id"],
            model=d["model"],
            version=d["version"],
            release=d["release"],
            runtime=d["runtime"],
            min_runtime_version=d["min_runtime_version"],
            arch=tuple(arch),
            pipeline=PipelineSpec.from_dict(d["pipeline"]),
            cipher=_cipher_from_dict(d["cipher"]),
            golden_set_sha256=d["golden_set_sha256"],
            provenance=json.loads(canonical_json(provenance)),
        )
        record._check_provenance(limits)
        return record


def _cipher_from_dict(data: object) -> CipherParams:
    if not isinstance(data, Mapping):
        raise _fail("cipher must be an object")
    try:
        return CipherParams.from_dict(data)
    except TypeError as e:
        raise _fail(f"cipher params malformed: {e}") from None


def image_target_custom(record: BundleRecord) -> dict[str, Any]:
    """Return the image target's `custom`: `{"tinyfleet": {"record": ...}}`."""
    return {NAMESPACE: {"record": record.to_dict()}}


def director_target_custom(
    record: BundleRecord, *, device_id: str, wrapped_key: bytes
) -> dict[str, Any]:
    """Return a director target's `custom`: the image's plus device and wrapped key."""
    custom = image_target_custom(record)
    custom[NAMESPACE].update(device_id=device_id, wrapped_key=wrapped_key.hex())
    return custom


def strip_director_fields(custom: Any) -> Any:
    """Return a deep copy of a director `custom` without director-only fields."""
    stripped = copy.deepcopy(custom)
    if isinstance(stripped, dict) and isinstance(stripped.get(NAMESPACE), dict):
        for key in DIRECTOR_ONLY_FIELDS:
            stripped[NAMESPACE].pop(key, None)
    return stripped


def record_of_target(
    custom: Any, length: int, hashes: Mapping[str, str], *, limits: Limits = DEFAULT_LIMITS
) -> BundleRecord:
    """Parse the record of an image target and check it against the target.

    Raises:
        InvalidRecordError: no valid record, or its cipher params disagree
            with the target's signed length and sha256.
    """
    ns = custom.get(NAMESPACE) if isinstance(custom, dict) else None
    if not isinstance(ns, dict) or "record" not in ns:
        raise _fail("target carries no bundle record")
    record = BundleRecord.from_dict(ns["record"], limits=limits)
    cipher = record.cipher
    if hashes.get("sha256") != cipher.ciphertext_sha256 or length != cipher.ciphertext_length:
        raise _fail("record cipher params disagree with the target length/sha256")
    return record
