"""Sensor data readers: UEA/UCR .ts, CSV streams and .npz windows, with unequal
lengths, missing values, labels or none, and clear errors naming the bad line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.sensor.data import cut_windows, fill_missing, load_sensor_data
from compression.pipeline.sensor.metrics import classification_report, detection_report
from compression.pipeline.sensor.params import SensorDataError, SensorParams
from tests.fixtures.sensor_data import synthetic_windows, write_ts


def test_it_reads_ts_with_missing_values_and_unequal_lengths(tmp_path: Path) -> None:
    windows, labels = synthetic_windows(6, seed=0, length=32)
    path = write_ts(tmp_path / "a.ts", windows, labels, missing_at=3)
    data = load_sensor_data(path)
    assert data.x.shape == (6, 3, 32) and data.class_names == ["idle", "walk", "run"]
    assert data.y is not None and data.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.missing_values == 1 and np.isfinite(data.x).all()
    # The missing step is interpolated between its neighbours.
    assert data.x[0, 0, 3] == pytest.approx((windows[0, 0, 2] + windows[0, 0, 4]) / 2, abs=1e-4)
    # The short last series is padded with its last value, keeping the sampling rate.
    assert data.lengths[-1] == 28
    assert np.all(data.x[-1, :, 28:] == data.x[-1, :, 27:28])


def test_it_truncates_to_the_requested_window(tmp_path: Path) -> None:
    windows, labels = synthetic_windows(3, seed=0, length=32)
    data = load_sensor_data(write_ts(tmp_path / "a.ts", windows, labels), window=16)
    assert data.x.shape == (3, 3, 16)
    assert np.allclose(data.x[0], windows[0, :, :16], atol=1e-4)


def test_it_cuts_a_csv_stream_into_labelled_windows(tmp_path: Path) -> None:
    path = tmp_path / "stream.csv"
    rows = ["timestamp,x,y,is_anomaly"]
    rows += [f"{i},{i % 7},{-i % 5},{1 if 40 <= i < 42 else 0}" for i in range(100)]
    rows[10] = "9,,1,0"  # a missing value
    path.write_text("\n".join(rows) + "\n")
    data = load_sensor_data(path, window=20, hop=10)
    assert data.x.shape == (9, 2, 20) and data.channels == ["x", "y"]
    assert data.missing_values == 1
    # A window is anomalous when any of its steps is.
    assert data.y is not None
    flagged = [data.class_names[v] for v in data.y]
    assert flagged == ["0", "0", "0", "1", "1", "0", "0", "0", "0"]


def test_it_reads_npz_windows_without_labels_and_with_valid_lengths(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((4, 2, 10))
    np.savez(tmp_path / "w.npz", x=x, lengths=np.array([10, 10, 6, 10]))
    data = load_sensor_data(tmp_path / "w.npz")
    assert data.y is None and data.x.shape == (4, 2, 10)
    assert np.allclose(data.x[2, :, 6:], x[2, :, 5:6])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.ts", "@classLabel true a\n@data\n1,2:a\n1,zz:a\n", "bad.ts line 4: 'zz'"),
        ("nodata.ts", "@dimensions 1\n", "no @data line"),
        ("stamps.ts", "@timeStamps true\n@data\n(1,2)\n", "time-stamped"),
        ("ragged.ts", "@data\n1,2:3,4\n1,2\n", "1 channels, the first series has 2"),
        ("labels.ts", "@classLabel true a b\n@data\n1,2:c\n", "labels ['c'] are not in"),
        ("short.csv", "a,b\n1,2\n", "fewer than one window"),
        ("fields.csv", "a,b\n1,2\n3\n", "fields.csv row 3: 1 fields"),
        ("data.txt", "1,2\n", "sensor data is .ts, .csv or .npz"),
    ],
)
def test_it_refuses_malformed_sensor_files_clearly(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SensorDataError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_sensor_data(path, window=8 if name.endswith(".csv") else 0)


def test_it_refuses_an_npz_without_x(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", y=np.zeros(3))
    with pytest.raises(SensorDataError, match="needs an array named x"):
        load_sensor_data(tmp_path / "w.npz")


def test_it_fills_a_channel_with_no_values_with_zero() -> None:
    filled, missing = fill_missing(np.array([[np.nan, np.nan], [1.0, np.nan]]))
    assert missing == 3 and filled.tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_it_places_windows_at_every_hop() -> None:
    assert cut_windows(10, 4, 3) == [0, 3, 6]
    assert cut_windows(3, 4, 1) == []


def test_it_reports_per_class_accuracy_and_the_confusion_matrix() -> None:
    report = classification_report(
        np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 2]), ["a", "b", "c"]
    )
    assert report["accuracy"] == 0.8 and report["confusion_matrix"] == [
        [1, 1, 0],
        [0, 2, 0],
        [0, 0, 1],
    ]
    assert (
        report["per_class"]["a"]["accuracy"] == 0.5
        and report["per_class"]["b"]["precision"] == 0.6667
    )
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-4)


def test_it_scores_detections_with_precision_recall_and_f1() -> None:
    report = detection_report(np.array([0, 1, 1, 0]), np.array([1, 1, 0, 0]))
    assert (report["precision"], report["recall"], report["f1"]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"layers": 5}, "layers"),
        ({"d_model": 30, "heads": 4}, "divisible"),
        ({"subsample": 3}, "subsample"),
    ],
)
def test_it_validates_sensor_parameters(params: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SensorParams(**params)  # type: ignore[arg-type]


def test_it_weights_rare_classes_up_for_imbalanced_data() -> None:
    from compression.pipeline.sensor.train import _class_weights

    weights = _class_weights(np.array([0] * 9 + [1] * 3), classes=3, balance=True)
    # Inverse frequency, normalised so a balanced set would get 1.0; absent classes 0.
    assert weights.tolist() == pytest.approx([12 / 9 / 3, 12 / 3 / 3, 0.0])
    assert _class_weights(np.array([0, 1]), classes=2, balance=False).tolist() == [1.0, 1.0]
