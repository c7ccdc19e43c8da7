"""Fleet models: devices, groups and enrollment here; bundles, keys and rollouts in
their own modules (imported below so Django finds them)."""

from fleet.models.bundles import Assignment, Bundle, BundleStatus
from fleet.models.devices import Device, DeviceStatus, EnrollmentToken, Group
from fleet.models.keys import KeyStatus, SigningKey, TufMetadata, TufRepository
from fleet.models.rollouts import Rollout, RolloutEvent, RolloutStatus, RolloutVariant
from fleet.models.rollups import BundleGroupHour, DeviceDay
from fleet.models.telemetry import DeviceEvent, TelemetryBatch

__all__ = [
    "Assignment",
    "Bundle",
    "BundleGroupHour",
    "BundleStatus",
    "Device",
    "DeviceDay",
    "DeviceEvent",
    "DeviceStatus",
    "EnrollmentToken",
    "Group",
    "KeyStatus",
    "Rollout",
    "RolloutEvent",
    "RolloutStatus",
    "RolloutVariant",
    "SigningKey",
    "TelemetryBatch",
    "TufMetadata",
    "TufRepository",
]
