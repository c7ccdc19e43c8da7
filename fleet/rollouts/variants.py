"""Which variant of a release a device can run: pure functions, no Django, no I/O.

A release (a rollout) holds one or more bundles of the same model, for example ONNX int8
for onnxruntime devices and TFLite int8 for LiteRT-only devices. Each device gets the
first variant, in the operator's order, that its facts (arch, runtimes and their
versions, as reported at enrollment) say it can run; a device with none gets the status
"no compatible variant" and a reason.

The checks mirror the agent's preflight (arch in the record's list, runtime installed
and at least the record's minimum version, compared by leading numeric components) so
the server never assigns a bundle the agent would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NO_COMPATIBLE_VARIANT = "no compatible variant"
MAX_VARIANTS = 8
_LEADING_NUMBER = re.compile(r"\d+")


class VariantError(ValueError):
    """The bundles cannot form one release (mixed models, clashing variants...)."""


@dataclass(frozen=True)
class Verdict:
    compatible: bool
    reason: str  # why not; empty when compatible


@dataclass(frozen=True)
class Choice:
    bundle_id: str | None  # None: no compatible variant
    reason: str  # why none fits (one reason per variant); empty when chosen


def runtime_version(text: object) -> tuple[int, ...] | None:
    """Leading numeric components, as the agent compares them: "2.3.0rc1" -> (2, 3, 0).

    None when the text does not start with a number (unparseable).
    """
    if not isinstance(text, str):
        return None
    parts: list[int] = []
    for piece in text.strip().split("."):
        match = _LEADING_NUMBER.match(piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts) or None


def compatibility(facts: Mapping[str, Any], record: Mapping[str, Any]) -> Verdict:
    """Can a device with these facts run the bundle this signed record describes?"""
    arch = facts.get("arch")
    allowed = list(record.get("arch") or [])
    if not isinstance(arch, str) or not arch:
        return Verdict(False, "the device has not reported its arch")
    if allowed and arch not in allowed:
        return Verdict(False, f"built for {'/'.join(allowed)}, the device is {arch}")
    runtimes = facts.get("runtimes")
    runtime = str(record.get("runtime") or "")
    if not isinstance(runtimes, Mapping) or runtime not in runtimes:
        return Verdict(False, f"needs {runtime}, which the device does not have")
    needed = str(record.get("min_runtime_version") or "0")
    have = runtime_version(runtimes[runtime])
    if have is None:
        return Verdict(
            False, f"the device's {runtime} version {runtimes[runtime]!r} is unparseable"
        )
    minimum = runtime_version(needed)
    if minimum is None:
        return Verdict(False, f"the bundle's minimum {runtime} version {needed!r} is unparseable")
    if have < minimum:
        return Verdict(False, f"needs {runtime} >= {needed}, the device has {runtimes[runtime]}")
    return Verdict(True, "")


def choose(facts: Mapping[str, Any], variants: Sequence[tuple[str, Mapping[str, Any]]]) -> Choice:
    """The first compatible variant in the operator's order, or why none fits.

    `variants` is [(bundle id, signed record), ...] in order of preference.
    """
    reasons = []
    for bundle_id, record in variants:
        verdict = compatibility(facts, record)
        if verdict.compatible:
            return Choice(bundle_id, "")
        reasons.append(f"{bundle_id}: {verdict.reason}")
    return Choice(None, f"{NO_COMPATIBLE_VARIANT} ({'; '.join(reasons) or 'no variants'})")


def check_release(variants: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Raises VariantError unless these records can be variants of one release.

    Same model slug for all; each bundle once; at most MAX_VARIANTS; and no two variants
    for the same runtime on a shared arch (the second could never be chosen there, which
    is almost certainly an operator mistake).
    """
    if not variants:
        raise VariantError("a rollout needs at least one bundle")
    if len(variants) > MAX_VARIANTS:
        raise VariantError(f"a rollout holds at most {MAX_VARIANTS} variants")
    ids = [bundle_id for bundle_id, _ in variants]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise VariantError(f"bundle {', '.join(repeated)} is listed more than once")
    models = {str(record.get("model")) for _, record in variants}
    if len(models) > 1:
        raise VariantError(
            f"variants must be bundles of the same model; got {', '.join(sorted(models))}"
        )
    for index, (first_id, first) in enumerate(variants):
        for second_id, second in variants[index + 1 :]:
            if first.get("runtime") != second.get("runtime"):
                continue
            shared = set(first.get("arch") or []) & set(second.get("arch") or [])
            if shared or not first.get("arch") or not second.get("arch"):
                raise VariantError(
                    f"bundles {first_id} and {second_id} are both {first.get('runtime')} "
                    f"variants for {'/'.join(sorted(shared)) or 'any arch'}; "
                    "a release holds one variant per runtime and arch"
                )
