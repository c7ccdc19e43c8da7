"""The sensor-transformer recipe in its converter subprocess, on real data: BasicMotions
(sktime's copy of the UEA archive, read out of the wheel) trained from scratch, int8 on
the TFLite Micro interpreter, measured arena and the C array a firmware compiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.runner import ConverterCrashError, run_in_subprocess
from compression.pipeline.tflm import micro
from compression.pipeline.tflm.carray import parse_c_array, parse_header_constants
from tests.fixtures.sensor_data import basic_motions, synthetic_stream_csv, synthetic_windows


@pytest.mark.slow  # ~1 min: 150 epochs on 40 windows, litert-torch conversion, int8
def test_it_trains_basic_motions_to_an_int8_tflm_model_within_the_targets(tmp_path: Path) -> None:
    train, test = basic_motions()
    out = tmp_path / "out"
    result = run_in_subprocess(
        "sensor-transformer",
        {
            "spec_path": str(train),
            "output_dir": str(out),
            "params": {},
            "train_path": str(train),
            "eval_path": str(test),
        },
        timeout=600,
    )
    metrics = result["metrics"]
    accuracy = metrics["accuracy"]
    assert accuracy["tflm_int8"] >= 0.975 and accuracy["float"] >= 0.975
    assert abs(accuracy["tflm_int8"] - accuracy["float"]) <= 0.01
    assert metrics["evaluation"]["tflm_int8"]["examples"] == 40
    assert metrics["flash_bytes"] <= 64 * 1024 and metrics["arena_bytes"] <= 32 * 1024
    model = (out / "model.tflite").read_bytes()
    assert parse_c_array((out / "model_data.cc").read_text()) == model
    header = parse_header_constants((out / "model_data.h").read_text())
    assert header["kTensorArenaSize"] == metrics["arena_bytes"]
    # The arena is exact: the model runs in it and not in 16 bytes less.
    feed = {micro.MicroModel(model).input_names[0]: np.zeros((1, 6, 100), np.float32)}
    assert micro.fits(model, feed, metrics["arena_bytes"])
    assert not micro.fits(model, feed, metrics["arena_bytes"] - micro.ARENA_ALIGNMENT)
    sidecar = json.loads((out / "sensor.json").read_text())
    assert sidecar["labels"] == ["Standing", "Running", "Walking", "Badminton"]


def test_it_fails_clearly_when_the_window_is_too_short_for_the_front_end(tmp_path: Path) -> None:
    windows, labels = synthetic_windows(8, seed=0, length=8)
    np.savez(tmp_path / "tiny.npz", x=windows, y=np.array(labels))
    with pytest.raises(ConverterCrashError, match="too short for subsample 8"):
        run_in_subprocess(
            "sensor-transformer",
            {
                "spec_path": str(tmp_path / "tiny.npz"),
                "output_dir": str(tmp_path / "out"),
                "params": {"subsample": 8, "epochs": 1},
                "train_path": str(tmp_path / "tiny.npz"),
            },
            timeout=120,
        )
    assert not (tmp_path / "out").exists()


def test_it_detects_an_injected_anomaly_better_than_the_z_score_baseline(tmp_path: Path) -> None:
    train = synthetic_stream_csv(tmp_path / "normal.csv", 600, seed=0)
    test = synthetic_stream_csv(tmp_path / "test.csv", 800, seed=1, anomaly_at=404)
    out = tmp_path / "out"
    result = run_in_subprocess(
        "sensor-transformer",
        {
            "spec_path": str(train),
            "output_dir": str(out),
            "params": {
                "task": "anomaly",
                "epochs": 15,
                "d_model": 16,
                "ff": 32,
                "threshold_margin": 1.5,
            },
            "train_path": str(train),
            "eval_path": str(test),
        },
        timeout=600,
    )
    found = result["metrics"]["anomaly"]
    assert found["anomalous_blocks"] >= 2
    model, baseline = found["tflm_int8"], found["zscore_baseline"]
    assert model["recall"] == 1.0 and model["f1"] > baseline["f1"]
    sidecar = json.loads((out / "sensor.json").read_text())
    assert (
        sidecar["task"] == "sensor-anomaly"
        and sidecar["threshold"] == result["metrics"]["threshold"]
    )
    assert sidecar["horizon"] == 8 and sidecar["window"] == 64 and sidecar["context"] == 56
    assert (
        result["metrics"]["arena_bytes"] > 0
        and (out / "model_data.h").read_text().count("kThreshold") == 1
    )
