"""Model slots and payload extraction: atomic installs that survive kill -9 and never
destroy the rollback target."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from tinyfleet_agent._internal.payload import (
    GoldenDigestError,
    PayloadLimits,
    UnsafePayloadError,
    extract_payload,
)
from tinyfleet_agent._internal.selftest import run_golden_selftest
from tinyfleet_agent._internal.slots import SlotError, SlotStore
from tinyfleet_agent.predictor import Predictor

from . import agent_fixtures as F

AGENT = Path(__file__).resolve().parents[2] / "agent"


class Crash(Exception):
    pass


def assert_serves(state: Path, allowed: set[str]) -> str:
    """The active slot is complete, loads, predicts and passes its golden set."""
    slot = SlotStore(state).active()
    assert slot is not None and slot.meta.bundle in allowed
    predictor = Predictor.from_slot(slot)
    assert predictor.predict(["turn the lights on"])[0]["label"] in F.LABELS
    assert run_golden_selftest(predictor, slot.path / "golden.npz").passed
    return slot.meta.bundle


def test_it_installs_into_the_inactive_slot_and_switches(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SlotStore(state)
    assert store.active() is None and store.previous() is None
    first = F.install(state, tmp_path / "w1", release=1)
    assert first.name == "a" and store.active() == first
    pointer = json.loads((state / "current").read_text())
    assert {k: pointer[k] for k in ("slot", "bundle", "release")} == {
        "slot": "a",
        "bundle": "intent-r1",
        "release": 1,
    }
    assert pointer["installed_at"] == first.meta.installed_at
    second = F.install(state, tmp_path / "w2", release=2)
    assert second.name == "b" and store.active() == second and store.previous() == first
    assert set(second.meta.files) == {"model.onnx", "tokenizer.json", "golden.npz"}


def test_it_installs_a_third_release_beside_the_rollback_slot_and_frees_the_oldest(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    for release in (1, 2):
        F.install(state, tmp_path / f"w{release}", release=release)
    third = F.install(state, tmp_path / "w3", release=3)
    store = SlotStore(state)
    assert third.name == "c" and store.active() == third
    assert store.previous() is not None and store.previous().meta.bundle == "intent-r2"  # type: ignore[union-attr]
    assert list((state / "slots" / "a").iterdir()) == []  # the old rollback target is freed
    fourth = F.install(state, tmp_path / "w4", release=4)
    assert fourth.name == "a" and store.previous().meta.bundle == "intent-r3"  # type: ignore[union-attr]


def test_it_reads_a_pointer_from_the_two_slot_layout(tmp_path: Path) -> None:
    state = tmp_path / "state"
    F.install(state, tmp_path / "w1", release=1)
    F.install(state, tmp_path / "w2", release=2)
    pointer = json.loads((state / "current").read_text())
    del pointer["previous"]  # what agents before the third slot wrote
    (state / "current").write_text(json.dumps(pointer))
    store = SlotStore(state)
    assert store.previous().meta.bundle == "intent-r1"  # type: ignore[union-attr]
    assert store.staging_name() == "c"
    assert F.install(state, tmp_path / "w3", release=3).name == "c"
    assert store.previous().meta.bundle == "intent-r2"  # type: ignore[union-attr]


def test_it_rolls_back_to_the_previous_install(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SlotStore(state)
    F.install(state, tmp_path / "w1", release=1)
    with pytest.raises(SlotError, match="no previous"):
        store.rollback()
    F.install(state, tmp_path / "w2", release=2)
    assert store.rollback().meta.bundle == "intent-r1"
    assert store.active().meta.bundle == "intent-r1"  # type: ignore[union-attr]
    assert store.previous().meta.bundle == "intent-r2"  # type: ignore[union-attr]


def test_it_never_takes_a_damaged_slot_for_complete(tmp_path: Path) -> None:
    state = tmp_path / "state"
    F.install(state, tmp_path / "w1", release=1)
    F.install(state, tmp_path / "w2", release=2)
    store = SlotStore(state)
    with (state / "slots" / "a" / "model.onnx").open("r+b") as f:
        f.truncate(10)
    assert store.previous() is None
    with pytest.raises(SlotError):
        store.rollback()
    (state / "slots" / "b" / "slot.json").write_text("{not json")
    assert store.active() is None


def test_it_refuses_to_activate_an_empty_slot(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.prepare_inactive()
    with pytest.raises(SlotError, match="empty"):
        store.activate(F.slot_meta("text-classification"))


def test_it_keeps_a_working_model_when_an_install_fails_at_any_step(tmp_path: Path) -> None:
    payload, golden = F.build_payload(tmp_path / "p2", seed=2)
    steps: list[str] = []
    F.install(tmp_path / "probe", tmp_path / "w0", release=1)
    F.install_steps(tmp_path / "probe", payload, golden, steps.append)
    assert len(steps) >= 10
    for index, step in enumerate(steps):
        state = tmp_path / f"s{index}"
        F.install(state, tmp_path / "w1", release=1)

        def hook(name: str, target: str = step) -> None:
            if name == target:
                raise Crash(name)

        with pytest.raises(Crash):
            F.install_steps(state, payload, golden, hook)
        switched = index >= steps.index("switch:temp-written") + 1
        assert assert_serves(state, {"intent-r2" if switched else "intent-r1"})
        F.install_steps(state, payload, golden, lambda name: None)  # the next try works
        assert assert_serves(state, {"intent-r2"}) == "intent-r2"


def assert_rollback_target(state: Path, expected: str) -> None:
    """The previous slot is complete and passes its golden set (instant rollback works)."""
    previous = SlotStore(state).previous()
    assert previous is not None and previous.meta.bundle == expected
    predictor = Predictor.from_slot(previous)
    assert run_golden_selftest(predictor, previous.path / "golden.npz").passed


def _two_releases(state: Path, tmp_path: Path) -> None:
    F.install(state, tmp_path / "w1", release=1)
    F.install(state, tmp_path / "w2", release=2)


def _install_steps_of_release_3(tmp_path: Path, payload: Path, golden: str) -> list[str]:
    steps: list[str] = []
    _two_releases(tmp_path / "probe", tmp_path)
    F.install_steps(tmp_path / "probe", payload, golden, steps.append, release=3)
    return steps


def test_it_keeps_the_rollback_slot_when_an_install_fails_at_any_step(tmp_path: Path) -> None:
    payload, golden = F.build_payload(tmp_path / "p3", seed=3)
    steps = _install_steps_of_release_3(tmp_path, payload, golden)
    assert "activate:freed" in steps
    for index, step in enumerate(steps):
        state = tmp_path / f"s{index}"
        _two_releases(state, tmp_path)

        def hook(name: str, target: str = step) -> None:
            if name == target:
                raise Crash(name)

        with pytest.raises(Crash):
            F.install_steps(state, payload, golden, hook, release=3)
        switched = index > steps.index("switch:temp-written")
        assert assert_serves(state, {"intent-r3" if switched else "intent-r2"})
        assert_rollback_target(state, "intent-r2" if switched else "intent-r1")
        SlotStore(state).discard_staging()  # what the updater does after a failure
        assert_rollback_target(state, "intent-r2" if switched else "intent-r1")


CHILD = """
import os, signal, sys
from pathlib import Path
sys.path[:0] = [{agent!r}, {root!r}]
from tests.agent.agent_fixtures import install_steps
state, payload, golden = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
kill_at, release = int(sys.argv[4]), int(sys.argv[5])
calls = []
print("ready", flush=True)
def hook(name):
    calls.append(name)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
while True:
    install_steps(state, payload, golden, hook, release)
    if kill_at >= 0:
        break
"""


def _child(
    tmp_path: Path, state: Path, payload: Path, golden: str, kill_at: int, release: int = 2
) -> subprocess.Popen[bytes]:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(agent=str(AGENT), root=str(AGENT.parent)))
    return subprocess.Popen(
        [sys.executable, str(script), str(state), str(payload), golden, str(kill_at), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_it_survives_kill_9_at_every_install_step(tmp_path: Path) -> None:
    payload, golden = F.build_payload(tmp_path / "p2", seed=2)
    steps: list[str] = []
    F.install(tmp_path / "probe", tmp_path / "w0", release=1)
    F.install_steps(tmp_path / "probe", payload, golden, steps.append)
    for index in range(1, len(steps) + 1):
        state = tmp_path / f"s{index}"
        F.install(state, tmp_path / "w1", release=1)
        child = _child(tmp_path, state, payload, golden, index)
        _, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err.decode()
        assert assert_serves(state, {"intent-r1", "intent-r2"})


def test_it_keeps_old_or_new_and_a_rollback_target_under_kill_9_at_every_step(
    tmp_path: Path,
) -> None:
    payload, golden = F.build_payload(tmp_path / "p3", seed=3)
    steps = _install_steps_of_release_3(tmp_path, payload, golden)
    for index in range(1, len(steps) + 1):
        state = tmp_path / f"s{index}"
        _two_releases(state, tmp_path)
        child = _child(tmp_path, state, payload, golden, index, release=3)
        _, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err.decode()
        serving = assert_serves(state, {"intent-r2", "intent-r3"})
        assert_rollback_target(state, {"intent-r2": "intent-r1", "intent-r3": "intent-r2"}[serving])
        F.install_steps(state, payload, golden, lambda name: None, release=3)  # next try works
        assert assert_serves(state, {"intent-r3"}) == "intent-r3"


def test_it_survives_kill_9_at_random_moments(tmp_path: Path) -> None:
    # Kills land anywhere, including in the middle of writing a file.
    payload, golden = F.build_payload(tmp_path / "p2", seed=2)
    state = tmp_path / "state"
    F.install(state, tmp_path / "w1", release=1)
    rng = random.Random(7)
    seen = set()
    for _ in range(6):
        child = _child(tmp_path, state, payload, golden, -1)  # installs in a loop
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(0.02 + rng.random() * 0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        seen.add(assert_serves(state, {"intent-r1", "intent-r2"}))
    assert "intent-r2" in seen


# -- payload extraction ---------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes], *, deflate: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names warn
        with zipfile.ZipFile(path, "w", compression=method) as z:
            for name, data in members.items():
                z.writestr(name.split("#")[0], data)
    return path


GOLDEN = b"golden-bytes"
GOLDEN_SHA = hashlib.sha256(GOLDEN).hexdigest()
GOOD = {"model.onnx": b"m" * 100, "tokenizer.json": b"{}", "golden.npz": GOLDEN}


def test_it_extracts_a_well_formed_payload(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    extracted = extract_payload(
        make_zip(tmp_path / "p.zip", {**GOOD, "model.onnx.data": b"w" * 10}),
        tmp_path / "out",
        golden_sha256=GOLDEN_SHA,
    )
    assert extracted.files == ("golden.npz", "model.onnx", "model.onnx.data", "tokenizer.json")
    assert extracted.model.read_bytes() == b"m" * 100 and extracted.tokenizer is not None


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({**GOOD, "../model.onnx.data": b"x"}, "not a flat file name"),
        ({**GOOD, "/etc/cron.d/x": b"x"}, "not a flat file name"),
        ({**GOOD, "sub/model.onnx.data": b"x"}, "not a flat file name"),
        ({**GOOD, "run.sh": b"#!/bin/sh"}, "unexpected member"),
        ({**GOOD, "model.onnx#dup": b"other"}, "duplicate"),
        ({**GOOD, "MODEL.onnx.data": b"a", "model.onnx.data": b"b"}, "duplicate"),
        ({"model.onnx": b"m", "golden.npz": GOLDEN, "model.tflite": b"t"}, "exactly one"),
        ({"tokenizer.json": b"{}", "golden.npz": GOLDEN}, "exactly one"),
        ({"model.onnx": b"m"}, "no golden.npz"),
    ],
)
def test_it_rejects_unsafe_payload_layouts(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafePayloadError, match=message):
        extract_payload(
            make_zip(tmp_path / "p.zip", members), tmp_path / "out", golden_sha256=GOLDEN_SHA
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_it_rejects_symlinks_compression_and_oversize(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as z:
        for name, data in GOOD.items():
            z.writestr(name, data)
        info = zipfile.ZipInfo("model.onnx.data")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    cases = [
        (link, PayloadLimits(), "not a regular file"),
        (make_zip(tmp_path / "d.zip", GOOD, deflate=True), PayloadLimits(), "compressed"),
        (make_zip(tmp_path / "big.zip", GOOD), PayloadLimits(max_total_bytes=50), "more than 50"),
        (
            make_zip(tmp_path / "many.zip", GOOD),
            PayloadLimits(max_members=2),
            "more than 2 members",
        ),
        (
            make_zip(tmp_path / "one.zip", GOOD),
            PayloadLimits(max_member_bytes=99),
            "larger than 99",
        ),
    ]
    for path, limits, message in cases:
        with pytest.raises(UnsafePayloadError, match=message):
            extract_payload(path, tmp_path / "out", golden_sha256=GOLDEN_SHA, limits=limits)
    (tmp_path / "junk.zip").write_bytes(os.urandom(200))
    with pytest.raises(UnsafePayloadError, match="not a readable ZIP"):
        extract_payload(tmp_path / "junk.zip", tmp_path / "out", golden_sha256=GOLDEN_SHA)


def test_it_checks_the_golden_digest_before_anything_else_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    payload = make_zip(tmp_path / "p.zip", {**GOOD, "golden.npz": b"tampered"})
    steps: list[str] = []
    with pytest.raises(GoldenDigestError):
        extract_payload(payload, tmp_path / "out", golden_sha256=GOLDEN_SHA, hook=steps.append)
    assert steps == ["extract:golden.npz"]  # the model was never written
    assert list((tmp_path / "out").iterdir()) == []


def test_it_refuses_to_extract_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "leftover").write_bytes(b"x")
    with pytest.raises(UnsafePayloadError, match="not empty"):
        extract_payload(
            make_zip(tmp_path / "p.zip", GOOD), tmp_path / "out", golden_sha256=GOLDEN_SHA
        )
