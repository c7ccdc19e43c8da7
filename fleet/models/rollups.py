"""Telemetry rollups: what dashboards and gates read instead of raw batches.

Two grains, both updated in the same transaction that stores a raw batch (so the batch
id de-duplication keeps them exact), and both rebuildable from raw batches:

* `BundleGroupHour`: one bundle, one group (or the whole fleet when `group` is null),
  one UTC hour. Hourly series and per-group breakdowns on the in-field page and
  `GET /api/v1/metrics`.
* `DeviceDay`: one device, one bundle, one UTC day. Device charts and rollout gates
  (which look at the exact devices of a wave).

Histograms are JSON lists of integer counts over the agent's fixed bucket edges
(`tinyfleet_agent.protocol`), merged by element-wise addition under a row
lock; JSON keeps SQLite (`make run`) and PostgreSQL on the same code path.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from fleet.models.devices import Device, Group


class RollupCounters(models.Model):
    """Counters shared by both grains."""

    requests = models.BigIntegerField(default=0)
    inferences = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    errors_by_kind = models.JSONField(default=dict)
    latency_counts = models.JSONField(default=list)
    input_tokens_counts = models.JSONField(default=list)
    confidence_counts = models.JSONField(default=list)
    low_confidence = models.BigIntegerField(default=0)
    # Golden self-tests: runs and failures add; the agreement per report is summed (for
    # a mean) and its minimum kept (what the gate reads).
    golden_runs = models.BigIntegerField(default=0)
    golden_failed = models.BigIntegerField(default=0)
    golden_reports = models.BigIntegerField(default=0)
    golden_agreement_sum = models.FloatField(default=0.0)
    golden_min_agreement = models.FloatField(null=True, blank=True)
    feedback_total = models.BigIntegerField(default=0)
    feedback_correct = models.BigIntegerField(default=0)
    # {"predicted": {"actual": count}}, capped in distinct pairs (see fleet.telemetry.rollups).
    feedback_confusion = models.JSONField(default=dict)
    batches = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class BundleGroupHour(RollupCounters):
    bundle = models.CharField(max_length=64)
    # Null: every device (the fleet-wide row, so totals never double-count a device that
    # belongs to several groups).
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="rollups"
    )
    hour = models.DateTimeField()
    # Each device always writes the same one of HOURLY_SHARDS rows per bundle, group and
    # hour (fleet.telemetry.rollups), so concurrent batches of a busy bundle rarely queue on one
    # row lock; readers add the shards up (distinct devices too, as a device never
    # spans two shards).
    shard = models.PositiveSmallIntegerField(default=0)
    devices = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["bundle", "group", "hour", "shard"],
                condition=Q(group__isnull=False),
                name="bundle_group_hour_unique",
            ),
            models.UniqueConstraint(
                fields=["bundle", "hour", "shard"],
                condition=Q(group__isnull=True),
                name="bundle_fleet_hour_unique",
            ),
        ]
        indexes = [models.Index(fields=["bundle", "hour"], name="bgh_bundle_hour")]
        ordering = ["hour"]


class DeviceDay(RollupCounters):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="rollups")
    bundle = models.CharField(max_length=64)
    day = models.DateField()
    # Bit h set once the device reported this bundle in UTC hour h of the day: how the
    # hourly rows count distinct devices exactly without keeping a list of ids.
    hours_mask = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "bundle", "day"], name="device_bundle_day_unique"
            ),
        ]
        indexes = [models.Index(fields=["bundle", "day"], name="dd_bundle_day")]
        ordering = ["day"]
