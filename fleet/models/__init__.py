"""Fleet models: devices, groups and enrollment here; bundles, keys and rollouts in
their own modules (imported below so Django finds them)."""

from fleet.models.devices import Device, DeviceStatus, EnrollmentToken, Group
from fleet.models.telemetry import DeviceEvent, TelemetryBatch

__all__ = [
    "Device",
    "DeviceEvent",
    "DeviceStatus",
    "EnrollmentToken",
    "Group",
    "TelemetryBatch",
]
