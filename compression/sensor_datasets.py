"""Sensor datasets at upload: which files are sensor data and what they hold (a leaf the
dataset registry and the sensor-model service both use)."""

from __future__ import annotations

from pathlib import Path

from compression.models import DatasetKind
from compression.pipeline.sensor.data import load_sensor_data
from compression.pipeline.sensor.params import SensorDataError
from compression.services import RegistryError

SENSOR_SUFFIXES = (".ts", ".csv")


def sensor_dataset_facts(path: Path, filename: str) -> tuple[str, int, bool]:
    """(kind, windows, has_labels) of an uploaded sensor file.

    Raises:
        RegistryError: the file is not readable sensor data (the message names it).
    """
    try:
        data = load_sensor_data(path, suffix=Path(filename).suffix)
    except SensorDataError as exc:
        message = str(exc).replace(path.name, Path(filename).name)
        raise RegistryError(f"invalid sensor data: {message}") from exc
    return DatasetKind.SENSOR, int(data.x.shape[0]), data.has_labels
