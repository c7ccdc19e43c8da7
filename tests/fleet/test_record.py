"""The signed bundle record is built from loaded rows alone: no database, no storage.

No test here is marked `django_db`, so pytest-django makes any query fail the test;
the rows are unsaved instances held in memory.
"""

from __future__ import annotations

import pytest
from tinyfleet_agent._internal.stream_aead import ciphertext_length_for
from tinyfleet_agent.bundle import CipherParams

from compression.models import Format, ModelVersion, RegisteredModel
from fleet.models import Bundle
from fleet.security.payload import PayloadInfo
from fleet.security.record import PublishError, build_record, model_slug, publish_overrides

PLAINTEXT = 10_000


def _cipher() -> CipherParams:
    return CipherParams(
        cipher="aes-256-gcm",
        chunk_size=4096,
        salt="ab" * 7,  # the 7-byte nonce prefix
        plaintext_sha256="1" * 64,
        plaintext_length=PLAINTEXT,
        ciphertext_length=ciphertext_length_for(PLAINTEXT, 4096),
        ciphertext_sha256="2" * 64,
    )


def _bundle(task: str = "text-classification", **version_fields: object) -> Bundle:
    model = RegisteredModel(name="Support tickets / v2", task=task)
    fields: dict[str, object] = {
        "number": 3,
        "format": Format.ONNX,
        "sha256": "3" * 64,
        "golden_sha256": "4" * 64,
        "recipe": "int8-dynamic",
        "inspection": {"labels": ["billing", "outage"]},
        "lineage_info": {"parent_chain": [{"id": 1, "sha256": "5" * 64, "recipe": "upload"}]},
        "metrics": {"accuracy": 0.912345678, "latency_ms": float("nan")},
        **version_fields,
    }
    version = ModelVersion(pk=7, model=model, **fields)
    return Bundle(id="b-0123456789ab", version=version, model=model_slug(model.name), release=2)


def test_it_builds_the_record_from_rows_in_memory() -> None:
    info = PayloadInfo(members=["model.onnx"], has_tokenizer=True, opset_imports={"": 21})

    record = build_record(_bundle(), _cipher(), info)

    assert record.model == "Support-tickets-v2"
    assert (record.version, record.release, record.runtime) == ("v3", 2, "onnxruntime")
    assert record.min_runtime_version == "1.18"  # opset 21 needs onnxruntime 1.18
    assert record.pipeline.labels == ("billing", "outage")  # from the inspection
    assert record.pipeline.tokenizer == "tokenizer.json"
    # Floats become strings the image repository can sign; NaN does not break it.
    assert record.provenance["metrics"] == {"accuracy": "0.912346", "latency_ms": "nan"}
    assert record.provenance["parent_chain"][0]["recipe"] == "upload"


def test_it_refuses_a_text_model_without_a_tokenizer() -> None:
    info = PayloadInfo(members=["model.onnx"], has_tokenizer=False)

    with pytest.raises(PublishError, match=r"no tokenizer\.json"):
        build_record(_bundle(), _cipher(), info)


def test_it_checks_operator_labels_against_the_model_outputs() -> None:
    version = _bundle(inspection={"outputs": [{"shape": [1, 3]}]}).version

    with pytest.raises(PublishError, match="2 labels given, but the model has 3 classes"):
        publish_overrides(version, ["a", "b"], None)
    assert publish_overrides(version, [" a", "b", "c "], 0.5) == {
        "labels": ["a", "b", "c"],
        "confidence_threshold": 0.5,
    }
