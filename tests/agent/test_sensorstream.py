"""The agent's sensor pipeline: the streaming window buffer (samples in, a window per
hop), sensor.json parsing, and a real trained int8 sensor model served through the
Predictor on LiteRT (the model is trained once per session by the recipe's subprocess)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tinyfleet_agent._internal.selftest import run_golden_selftest
from tinyfleet_agent.predictor import InputError, Predictor, RuntimeLoadError
from tinyfleet_agent.protocol import PipelineSpec
from tinyfleet_agent.sensorstream import SensorConfig, SensorStreamError, StreamBuffer

from compression.pipeline.runner import run_in_subprocess
from compression.pipeline.sensor.data import load_sensor_data
from tests.fixtures.sensor_data import synthetic_ts_pair


def test_it_emits_the_first_window_when_full_then_one_per_hop() -> None:
    buffer = StreamBuffer(channels=2, window=4, hop=2)
    assert buffer.push([[0, 0], [1, 10], [2, 20]]) == []
    first = buffer.push([[3, 30]])
    assert first == [(4, [[0, 1, 2, 3], [0, 10, 20, 30]])]
    assert buffer.push([[4, 40]]) == []
    later = buffer.push([[5, 50], [6, 60], [7, 70], [8, 80]])
    assert [end for end, _ in later] == [6, 8]
    assert later[-1][1] == [[4, 5, 6, 7], [40, 50, 60, 70]]  # the 8th sample ends it
    assert buffer.buffered == 4


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([[1.0]], "list of 2 channel values"),
        ([[1.0, "x"]], "must be numbers"),
        ([[1.0, float("nan")]], "finite"),
    ],
)
def test_it_refuses_malformed_samples_and_buffers_none_of_the_request(
    samples: list[list[object]], message: str
) -> None:
    buffer = StreamBuffer(channels=2, window=4, hop=2)
    with pytest.raises(SensorStreamError, match=message):
        buffer.push([[0.0, 0.0], *samples])
    assert buffer.buffered == 0


def test_it_refuses_a_sensor_json_with_impossible_sizes(tmp_path: Path) -> None:
    (tmp_path / "sensor.json").write_text(
        json.dumps(
            {
                "task": "sensor-classification",
                "input": "samples",
                "channels": 0,
                "window": 8,
                "hop": 4,
                "labels": [],
            }
        )
    )
    with pytest.raises(SensorStreamError, match="impossible sizes"):
        SensorConfig.load(tmp_path)
    (tmp_path / "sensor.json").write_text("{")
    with pytest.raises(SensorStreamError, match="missing or malformed"):
        SensorConfig.load(tmp_path)


def train_sensor_model(work: Path) -> tuple[Path, Path]:
    """Train the small int8 sensor model into work/out; returns (model dir, test data).
    A server job (torch): `make check-arm64` runs it on the host, and the emulated board
    only serves the result (TINYFLEET_TEST_SENSOR_MODEL names that folder)."""
    train, test = synthetic_ts_pair(work / "data")
    if not (work / "out").is_dir():
        run_in_subprocess(
            "sensor-transformer",
            {
                "spec_path": str(train),
                "output_dir": str(work / "out"),
                "params": {"epochs": 30, "d_model": 16, "ff": 32},
                "train_path": str(train),
            },
            timeout=600,
        )
    return work / "out", test


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    prebuilt = os.environ.get("TINYFLEET_TEST_SENSOR_MODEL")
    if prebuilt:
        yield Path(prebuilt) / "out", Path(prebuilt) / "data" / "synthetic_TEST.ts"
        return
    work = tmp_path_factory.mktemp("sensor-model")
    yield train_sensor_model(work)
    shutil.rmtree(work, ignore_errors=True)


def _predictor(model_dir: Path) -> Predictor:
    spec = PipelineSpec("sensor-classification", None, 64, "none", False, ("idle", "walk", "run"))
    return Predictor(model_dir, spec, runtime="litert")


def test_it_classifies_raw_windows_with_the_int8_model_on_litert(
    trained: tuple[Path, Path],
) -> None:
    model_dir, test_file = trained
    predictor = _predictor(model_dir)
    test = load_sensor_data(test_file)
    assert test.y is not None
    result = predictor.predict_detailed([w.tolist() for w in test.x])
    labels = [o["label"] for o in result.outputs]
    truth = [test.class_names[int(v)] for v in test.y]
    assert np.mean([a == b for a, b in zip(labels, truth, strict=True)]) >= 0.9
    assert result.input_lengths == [64] * len(test.x) and len(result.confidences) == len(test.x)
    assert set(result.outputs[0]["scores"]) == {"idle", "walk", "run"}


def test_it_refuses_windows_of_the_wrong_shape(trained: tuple[Path, Path]) -> None:
    predictor = _predictor(trained[0])
    with pytest.raises(InputError, match=r"\[3, 64\]"):
        predictor.predict([[[0.0] * 64] * 2])
    with pytest.raises(InputError, match="non-empty list"):
        predictor.predict([])


def test_it_runs_the_bundle_on_tflite_micro_in_the_measured_arena_when_asked(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model_dir, test_file = trained
    windows = [w.tolist() for w in load_sensor_data(test_file).x[:8]]
    on_litert = [o["label"] for o in _predictor(model_dir).predict(windows)]
    monkeypatch.setenv("TINYFLEET_AGENT_SENSOR_RUNTIME", "tflite-micro")
    micro = _predictor(model_dir)
    assert micro.runtime.name == "tflite-micro"
    assert (
        micro.runtime.arena_bytes
        == json.loads((model_dir / "sensor.json").read_text())["arena_bytes"]
    )
    assert [o["label"] for o in micro.predict(windows)] == on_litert
    # The install self-test replays the golden set on the interpreter the device uses.
    assert run_golden_selftest(micro, model_dir / "golden.npz").passed

    # Too small an arena cannot load: the install would be refused, not run out of memory.
    starved = tmp_path / "starved"
    shutil.copytree(model_dir, starved)
    sidecar = json.loads((starved / "sensor.json").read_text())
    (starved / "sensor.json").write_text(json.dumps({**sidecar, "arena_bytes": 2048}))
    with pytest.raises(RuntimeLoadError, match="could not load the model in 2048 bytes"):
        _predictor(starved)
