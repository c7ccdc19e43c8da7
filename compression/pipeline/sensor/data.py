"""Reading sensor data into windows: channels x time, with labels or without.

Three layouts are accepted:

* UEA/UCR ``.ts`` (sktime/aeon): one series per line, channels separated by ``:``,
  values by ``,``, the class label last when ``@classLabel true``; ``?`` is missing.
* ``.csv``: one *stream*, a row per time step, a column per channel. A column named
  ``label``, ``class`` or ``is_anomaly`` holds the label of the step; a column named
  ``timestamp``/``time`` is ignored. The stream is cut into windows (``window``,
  ``hop``); a window's label is its most frequent step label, or ``1`` for anomaly
  columns when any step in it is anomalous.
* ``.npz``: ``x`` shaped [windows, channels, time] (or [windows, time]), optional
  ``y`` (ints or strings) and ``lengths`` (valid steps per window; the rest is padding).

Unequal lengths are truncated or padded with each channel's last value, so the sampling
rate is kept (a device streams at a fixed rate). Missing values are interpolated
linearly inside each channel; a channel with no value at all becomes 0.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.sensor.params import SensorDataError

__all__ = [
    "MAX_WINDOWS",
    "SensorData",
    "cut_windows",
    "fill_missing",
    "fit_length",
    "load_sensor_data",
    "read_csv_stream",
    "read_ts",
]

MAX_WINDOWS = 200_000
MAX_CHANNELS = 256
MAX_LENGTH = 100_000
LABEL_COLUMNS = ("label", "class", "is_anomaly")
TIME_COLUMNS = ("timestamp", "time", "datetime", "date")


@dataclass
class SensorData:
    """Windows [n, channels, time] float32, labels as class indices (or None)."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: list[str]
    channels: list[str]
    source: str
    missing_values: int = 0
    lengths: list[int] = field(default_factory=list)

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    def summary(self) -> dict[str, Any]:
        counts = Counter(int(v) for v in self.y) if self.y is not None else Counter()
        return {
            "windows": int(self.x.shape[0]),
            "channels": int(self.x.shape[1]),
            "length": int(self.x.shape[2]),
            "labels": self.has_labels,
            "classes": self.class_names,
            "class_counts": {self.class_names[k]: counts[k] for k in sorted(counts)},
            "missing_values": self.missing_values,
            "unequal_lengths": len(set(self.lengths)) > 1,
            "source": self.source,
        }


def fill_missing(series: np.ndarray) -> tuple[np.ndarray, int]:
    """Interpolate NaNs per channel ([channels, time]); returns (filled, how many)."""
    out = np.array(series, dtype=np.float64)
    missing = int(np.isnan(out).sum())
    if not missing:
        return out.astype(np.float32), 0
    steps = np.arange(out.shape[1])
    for row in out:
        bad = np.isnan(row)
        if bad.all():
            row[:] = 0.0
        elif bad.any():
            row[bad] = np.interp(steps[bad], steps[~bad], row[~bad])
    return out.astype(np.float32), missing


def fit_length(series: np.ndarray, length: int) -> np.ndarray:
    """Truncate or pad (repeating each channel's last value) to ``length`` steps."""
    have = series.shape[1]
    if have >= length:
        return series[:, :length]
    pad = np.repeat(series[:, -1:], length - have, axis=1)
    return np.concatenate([series, pad], axis=1)


def _number(text: str, where: str) -> float:
    text = text.strip()
    if text in ("?", "", "nan", "NaN", "NA"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise SensorDataError(f"{where}: {text[:20]!r} is not a number") from None


def _header(lines: list[str]) -> tuple[dict[str, str], list[str], int]:
    meta: dict[str, str] = {}
    classes: list[str] = []
    for number, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lower = line.lower()
        if lower.startswith("@data"):
            return meta, classes, number + 1
        if lower.startswith("@classlabel"):
            parts = line.split()
            meta["classlabel"] = parts[1].lower() if len(parts) > 1 else "false"
            classes = parts[2:]
        elif line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            meta[key.lower()] = value.strip().lower()
    raise SensorDataError("no @data line: not a UEA/UCR .ts file")


def read_ts(
    text: str, name: str = "data.ts"
) -> tuple[list[np.ndarray], list[str] | None, list[str]]:
    """Series ([channels, time] each), labels (or None) and the declared classes.

    Raises:
        SensorDataError: time-stamped series, ragged channels, unknown labels, bad numbers.
    """
    lines = text.splitlines()
    meta, classes, start = _header(lines)
    if meta.get("timestamps") == "true":
        raise SensorDataError(f"{name}: time-stamped .ts series are not supported")
    labelled = meta.get("classlabel") == "true"
    series: list[np.ndarray] = []
    labels: list[str] = []
    for number, raw in enumerate(lines[start:], start=start + 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if labelled:
            if len(parts) < 2:
                raise SensorDataError(f"{name} line {number}: no class label")
            labels.append(parts[-1].strip())
            parts = parts[:-1]
        where = f"{name} line {number}"
        rows = [[_number(v, where) for v in part.split(",")] for part in parts]
        longest = max(len(r) for r in rows)
        # Channels of one series may differ in length; pad with NaN, filled later.
        padded = np.full((len(rows), longest), np.nan)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = row
        if series and padded.shape[0] != series[0].shape[0]:
            raise SensorDataError(
                f"{where}: {padded.shape[0]} channels, the first series has {series[0].shape[0]}"
            )
        series.append(padded)
        if len(series) > MAX_WINDOWS:
            raise SensorDataError(f"{name}: more than {MAX_WINDOWS} series")
    if not series:
        raise SensorDataError(f"{name}: no series after @data")
    if labelled and classes:
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise SensorDataError(f"{name}: labels {unknown[:5]} are not in @classLabel")
    return series, (labels if labelled else None), classes


def read_csv_stream(
    text: str, name: str = "data.csv"
) -> tuple[np.ndarray, list[str], list[str] | None, str | None]:
    """The stream [channels, time], channel names, step labels (or None), label column.

    Raises:
        SensorDataError: no header, no numeric channel, bad numbers.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise SensorDataError(f"{name}: empty file")
    names = [h.strip() for h in header]
    label_at = next((i for i, h in enumerate(names) if h.lower() in LABEL_COLUMNS), None)
    skip = {i for i, h in enumerate(names) if h.lower() in TIME_COLUMNS}
    channel_at = [i for i in range(len(names)) if i != label_at and i not in skip]
    if not channel_at:
        raise SensorDataError(f"{name}: no channel column (only labels/timestamps)")
    if len(channel_at) > MAX_CHANNELS:
        raise SensorDataError(f"{name}: {len(channel_at)} channels; the limit is {MAX_CHANNELS}")
    values: list[list[float]] = []
    labels: list[str] = []
    for number, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            raise SensorDataError(
                f"{name} row {number}: {len(row)} fields, header has {len(names)}"
            )
        where = f"{name} row {number}"
        values.append([_number(row[i], where) for i in channel_at])
        if label_at is not None:
            labels.append(row[label_at].strip())
        if len(values) > MAX_WINDOWS * 64:
            raise SensorDataError(f"{name}: the stream is too long")
    if not values:
        raise SensorDataError(f"{name}: no data rows")
    label_name = names[label_at] if label_at is not None else None
    return (
        np.asarray(values, dtype=np.float64).T,
        [names[i] for i in channel_at],
        labels if label_at is not None else None,
        label_name,
    )


def cut_windows(length: int, window: int, hop: int) -> list[int]:
    """Start indices of full windows over a stream of ``length`` steps."""
    if length < window:
        return []
    return list(range(0, length - window + 1, max(1, hop)))


def _window_label(step_labels: list[str], anomaly: bool) -> str:
    if anomaly:
        return "1" if any(v not in ("0", "", "0.0") for v in step_labels) else "0"
    return Counter(step_labels).most_common(1)[0][0]


def _encode(labels: list[str], declared: list[str]) -> tuple[np.ndarray, list[str]]:
    classes = list(declared) if declared else sorted(set(labels), key=_natural)
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[v] for v in labels], dtype=np.int64), classes


def _natural(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def _finish(
    series: list[np.ndarray],
    labels: list[str] | None,
    declared: list[str],
    channels: list[str],
    window: int,
    source: str,
) -> SensorData:
    lengths = [int(s.shape[1]) for s in series]
    if max(lengths) > MAX_LENGTH:
        raise SensorDataError(
            f"{source}: a series has {max(lengths)} steps; the limit is {MAX_LENGTH}"
        )
    length = window or max(lengths)
    filled, missing = [], 0
    for s in series:
        clean, count = fill_missing(s)
        missing += count
        filled.append(fit_length(clean, length))
    x = np.stack(filled).astype(np.float32)
    y, classes = (None, []) if labels is None else _encode(labels, declared)
    return SensorData(x, y, classes, channels, source, missing, lengths)


def _load_ts(path: Path, window: int) -> SensorData:
    series, labels, classes = read_ts(path.read_text(encoding="utf-8", errors="replace"), path.name)
    channels = [f"ch{i}" for i in range(series[0].shape[0])]
    return _finish(series, labels, classes, channels, window, path.name)


def _load_csv(path: Path, window: int, hop: int) -> SensorData:
    stream, channels, step_labels, label_name = read_csv_stream(
        path.read_text(encoding="utf-8", errors="replace"), path.name
    )
    stream, missing = fill_missing(stream)
    size = window or min(128, stream.shape[1])
    starts = cut_windows(stream.shape[1], size, hop or size // 2)
    if not starts:
        raise SensorDataError(
            f"{path.name}: {stream.shape[1]} rows, fewer than one window of {size}"
        )
    series = [stream[:, s : s + size] for s in starts]
    labels = None
    if step_labels is not None:
        anomaly = (label_name or "").lower() == "is_anomaly"
        labels = [_window_label(step_labels[s : s + size], anomaly) for s in starts]
    data = _finish(series, labels, [], channels, size, path.name)
    data.missing_values = missing
    return data


def _load_npz(path: Path, window: int) -> SensorData:
    try:
        with zipfile.ZipFile(path):
            pass
        arrays = np.load(path, allow_pickle=False)
        x = np.asarray(arrays["x"], dtype=np.float64) if "x" in arrays else None
        y = arrays.get("y")
        lengths = arrays.get("lengths")
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise SensorDataError(f"{path.name}: not a readable .npz ({exc})") from None
    if x is None:
        raise SensorDataError(f"{path.name}: needs an array named x [windows, channels, time]")
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or 0 in x.shape:
        raise SensorDataError(
            f"{path.name}: x must be [windows, channels, time], got {list(x.shape)}"
        )
    if y is not None and len(y) != len(x):
        raise SensorDataError(f"{path.name}: {len(y)} labels for {len(x)} windows")
    series = []
    for i, item in enumerate(x):
        valid = int(lengths[i]) if lengths is not None else item.shape[1]
        series.append(item[:, : max(1, min(valid, item.shape[1]))])
    labels = [str(v) for v in y.tolist()] if y is not None else None
    channels = [f"ch{i}" for i in range(x.shape[1])]
    return _finish(series, labels, [], channels, window, path.name)


def load_sensor_data(
    path: str | Path, window: int = 0, hop: int = 0, suffix: str | None = None
) -> SensorData:
    """Read a .ts, .csv or .npz file into windows (``suffix`` overrides the path's).

    Raises:
        SensorDataError: unknown suffix, malformed content, too large.
    """
    path = Path(path)
    suffix = (suffix or path.suffix).lower()
    if suffix == ".ts":
        data = _load_ts(path, window)
    elif suffix == ".csv":
        data = _load_csv(path, window, hop)
    elif suffix == ".npz":
        data = _load_npz(path, window)
    else:
        raise SensorDataError(f"{path.name}: sensor data is .ts, .csv or .npz")
    if data.x.shape[1] > MAX_CHANNELS:
        raise SensorDataError(
            f"{path.name}: {data.x.shape[1]} channels; the limit is {MAX_CHANNELS}"
        )
    if not np.isfinite(data.x).all():
        raise SensorDataError(f"{path.name}: values too large to be float32")
    return data
