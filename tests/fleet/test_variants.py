"""The pure variant rules: can a device run a bundle, which variant it gets, and which
sets of bundles can form one release. No database: facts and records are plain dicts
shaped like the agent's `device_facts()` and a bundle's signed record."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.rollouts.variants import (
    NO_COMPATIBLE_VARIANT,
    VariantError,
    check_release,
    choose,
    compatibility,
    runtime_version,
)


def record(runtime: str = "onnxruntime", minimum: str = "1.17", **extra: Any) -> dict[str, Any]:
    return {
        "model": "minilm",
        "runtime": runtime,
        "min_runtime_version": minimum,
        "arch": ["x86_64", "aarch64"],
        **extra,
    }


def facts(arch: str = "x86_64", **runtimes: str) -> dict[str, Any]:
    return {"arch": arch, "runtimes": {k.replace("_", "-"): v for k, v in runtimes.items()}}


ONNX_DEVICE = facts(onnxruntime="1.31.1")


@pytest.mark.parametrize(
    ("device", "bundle", "reason_part"),
    [
        (ONNX_DEVICE, record(), None),
        (facts("aarch64", onnxruntime="1.17"), record(), None),  # exactly the minimum
        (facts("aarch64", onnxruntime="1.17.0rc1"), record(minimum="1.17.0"), None),
        (facts("armv7l", onnxruntime="1.31.1"), record(), "the device is armv7l"),
        (facts(litert="2.3.0"), record(), "needs onnxruntime, which the device does not have"),
        (facts(tflite_runtime="2.14.0"), record("litert", "2.0"), "needs litert"),
        (facts(onnxruntime="1.16.3"), record(minimum="1.17"), "needs onnxruntime >= 1.17"),
        # The agent compares leading numbers: 1.17 is older than 1.17.1.
        (facts(onnxruntime="1.17"), record(minimum="1.17.1"), "the device has 1.17"),
        (facts(onnxruntime="nightly"), record(), "'nightly' is unparseable"),
        (facts(onnxruntime=""), record(), "is unparseable"),
        ({"arch": "x86_64", "runtimes": {"onnxruntime": 131}}, record(), "unparseable"),
        (facts(onnxruntime="1.31.1"), record(minimum="latest"), "minimum onnxruntime version"),
        ({"runtimes": {"onnxruntime": "1.31.1"}}, record(), "has not reported its arch"),
        ({"arch": "x86_64"}, record(), "does not have"),
        ({}, record(), "has not reported its arch"),
    ],
)
def test_it_decides_compatibility_with_a_reason(
    device: dict[str, Any], bundle: dict[str, Any], reason_part: str | None
) -> None:
    verdict = compatibility(device, bundle)
    assert verdict.compatible is (reason_part is None), verdict
    if reason_part is None:
        assert verdict.reason == ""
    else:
        assert reason_part in verdict.reason


def test_it_treats_a_record_without_arch_list_as_any_arch() -> None:
    assert compatibility(facts("riscv64", onnxruntime="1.20"), record(arch=[])).compatible


def test_it_reads_versions_like_the_agent() -> None:
    assert runtime_version("2.3.0rc1") == (2, 3, 0)
    assert runtime_version("1.31.1+cpu") == (1, 31, 1)
    assert runtime_version("v1.2") is None
    assert runtime_version(None) is None


VARIANTS = [("b-onnx", record()), ("b-tflite", record("litert", "2.0"))]


def test_it_chooses_the_first_compatible_variant_in_the_operators_order() -> None:
    both = facts(onnxruntime="1.31.1", litert="2.3.0")
    assert choose(both, VARIANTS).bundle_id == "b-onnx"
    assert choose(both, list(reversed(VARIANTS))).bundle_id == "b-tflite"
    assert choose(facts(litert="2.3.0"), VARIANTS).bundle_id == "b-tflite"
    assert choose(ONNX_DEVICE, VARIANTS).bundle_id == "b-onnx"


def test_it_says_why_no_variant_fits() -> None:
    choice = choose(facts("armv7l", tflite_runtime="2.14.0"), VARIANTS)
    assert choice.bundle_id is None
    assert choice.reason.startswith(NO_COMPATIBLE_VARIANT)
    assert "b-onnx: built for x86_64/aarch64, the device is armv7l" in choice.reason
    assert "b-tflite:" in choice.reason


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([], "at least one bundle"),
        ([("b-1", record()), ("b-1", record("litert"))], "listed more than once"),
        ([("b-1", record()), ("b-2", record("litert", model="other"))], "same model"),
        ([("b-1", record()), ("b-2", record(minimum="1.20"))], "one variant per runtime"),
        (
            [("b-1", record(arch=["x86_64"])), ("b-2", record(arch=["x86_64", "armv7l"]))],
            "for x86_64",
        ),
        ([(f"b-{i}", record(arch=[f"a{i}"])) for i in range(9)], "at most 8"),
    ],
)
def test_it_refuses_bundles_that_cannot_form_one_release(
    variants: list[tuple[str, dict[str, Any]]], message: str
) -> None:
    with pytest.raises(VariantError, match=message):
        check_release(variants)


def test_it_accepts_one_variant_per_runtime_and_arch() -> None:
    check_release(VARIANTS)
    check_release([("b-x86", record(arch=["x86_64"])), ("b-arm", record(arch=["aarch64"]))])
