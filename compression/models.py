"""Model registry and jobs.

A ModelVersion is immutable once created: its bytes (sha256), format and lineage never
change; only its inspection/metrics and status move forward. Jobs are database rows
(status, progress, stage, log) so the UI and API read progress without the broker.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class Task(models.TextChoices):
    TEXT_EMBEDDING = "text-embedding", "Text embedding"
    TEXT_CLASSIFICATION = "text-classification", "Text classification"
    TOKEN_CLASSIFICATION = "token-classification", "Token classification"
    TENSOR = "tensor", "Tensor in, tensor out"
    SENSOR_CLASSIFICATION = "sensor-classification", "Sensor window classification"
    SENSOR_ANOMALY = "sensor-anomaly", "Sensor anomaly detection"


TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")


class Format(models.TextChoices):
    ONNX = "onnx", "ONNX"
    TFLITE = "tflite", "TFLite"
    HF_DIR = "hf-dir", "Hugging Face directory"
    # What a sensor model is trained from (data digests + architecture); not runnable.
    SENSOR_SPEC = "sensor-spec", "Sensor training spec"


class VersionStatus(models.TextChoices):
    PENDING = "pending"
    INSPECTING = "inspecting"
    READY = "ready"
    FAILED = "failed"


class RegisteredModel(models.Model):
    name = models.CharField(max_length=100, unique=True)
    task = models.CharField(max_length=32, choices=Task.choices)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    IMMUTABLE_FIELDS = ("model_id", "number", "format", "storage_key", "sha256", "size_bytes")

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    format = models.CharField(max_length=16, choices=Format.choices)
    storage_key = models.CharField(max_length=512)
    original_filename = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    recipe = models.CharField(max_length=64, blank=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=VersionStatus.choices, default=VersionStatus.PENDING
    )
    error = models.TextField(blank=True)
    inspection = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # How to feed and read the model (tokenizer, pooling, labels); travels into bundles.
    pipeline = models.JSONField(default=dict, blank=True)
    # Golden set for the device self-test: storage key of its .npz and its sha256.
    golden_key = models.CharField(max_length=512, blank=True)
    golden_sha256 = models.CharField(max_length=64, blank=True)
    lineage_info = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model__name", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_unique"),
            models.UniqueConstraint(fields=["model", "sha256"], name="version_bytes_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            stored = type(self).objects.filter(pk=self.pk).values(*self.IMMUTABLE_FIELDS).first()
            if stored and any(stored[f] != getattr(self, f) for f in self.IMMUTABLE_FIELDS):
                raise ValueError("a model version's bytes and identity are immutable")
        super().save(*args, **kwargs)

    @property
    def primary_output(self) -> str | None:
        """The output every figure, golden set and device pipeline uses."""
        chosen = (self.pipeline or {}).get("output") or (self.inspection or {}).get(
            "primary_output"
        )
        return str(chosen) if chosen else None

    def output_roles(self) -> list[dict[str, Any]]:
        """Inspected outputs with their role and whether each is the primary one."""
        primary = self.primary_output
        return [
            {**o, "primary": o.get("name") == primary}
            for o in (self.inspection or {}).get("outputs") or []
        ]

    def warnings(self) -> list[str]:
        """What will stop or mislead the journey later, said now (upload, version page)."""
        found: list[str] = []
        inspection = self.inspection or {}
        if self.status != VersionStatus.READY:
            return found
        text = self.model.task in TEXT_TASKS
        # Versions inspected before tokenizers were recorded say nothing: no false alarm.
        tokenizer = inspection.get("tokenizer")
        if text and isinstance(tokenizer, dict) and not tokenizer.get("present"):
            found.append(
                f"This is a {self.model.task} model but the upload has no tokenizer: it "
                "cannot be evaluated on text or published. Attach one below, or upload a zip "
                "holding the .onnx file and its tokenizer files (tokenizer.json, vocab.txt)."
            )
        if inspection.get("quantized"):
            found.append(
                f"Already quantized ({inspection['quantized']}): int8 recipes refuse it. "
                "Quantize its fp32 original instead, or publish it as it is."
            )
        if inspection.get("outputs") and not self.primary_output:
            found.append(inspection.get("primary_reason") or "No output can be measured.")
        return found

    @property
    def is_zip(self) -> bool:
        return self.original_filename.lower().endswith(".zip")

    def lineage(self) -> list[ModelVersion]:
        """This version and its ancestors, oldest first."""
        chain: list[ModelVersion] = []
        node: ModelVersion | None = self
        while node is not None and len(chain) < 100:
            chain.append(node)
            node = node.parent
        return list(reversed(chain))

    def deletion_blockers(self) -> list[str]:
        """Why this version may not be deleted (empty when it may)."""
        reasons = []
        if self.children.exists():
            reasons.append("other versions were derived from it")
        if self.jobs.filter(status__in=ACTIVE_JOB_STATUSES).exists():
            reasons.append("a job is using it")
        if self.bundles.exists():
            reasons.append("a bundle was published from it (devices may run it)")
        return reasons


class DatasetKind(models.TextChoices):
    TEXT = "text-jsonl", "Text (JSONL)"
    TENSORS = "tensors-npz", "Tensors (.npz)"
    SENSOR = "sensor", "Sensor windows (.ts, .csv, .npz)"


class Dataset(models.Model):
    """Evaluation or calibration data: JSONL of {"text", "label"?} or an .npz of tensors."""

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=DatasetKind.choices)
    storage_key = models.CharField(max_length=512)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    rows = models.PositiveIntegerField()
    has_labels = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class JobKind(models.TextChoices):
    INSPECT = "inspect"
    COMPRESS = "compress"


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class Job(models.Model):
    MAX_ATTEMPTS = 3
    LOG_LIMIT = 64 * 1024

    kind = models.CharField(max_length=16, choices=JobKind.choices)
    recipe = models.CharField(max_length=64, blank=True)
    params = models.JSONField(default=dict, blank=True)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="jobs")
    result_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    eval_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    calibration_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    stage = models.CharField(max_length=64, default="queued")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Set when the job is one step of a chain (compression.chains).
    chain = models.ForeignKey(
        "Chain", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    chain_step = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"job {self.pk} {self.kind} {self.status}"

    @property
    def is_finished(self) -> bool:
        return self.status not in ACTIVE_JOB_STATUSES

    @classmethod
    def claim(cls, job_id: int) -> Job | None:
        """Mark a job running for this delivery, or None when it must not run.

        A redelivered message (worker crash with acks_late) finds the job `running` and
        runs it again from the start; finished or cancelled jobs are never re-run.
        """
        with transaction.atomic():
            job = cls.objects.select_for_update().filter(pk=job_id).first()
            if job is None or job.is_finished:
                return None
            if job.attempts >= cls.MAX_ATTEMPTS:
                job.finish(JobStatus.FAILED, error="gave up after repeated worker crashes")
                return None
            now = timezone.now()
            job.status, job.attempts = JobStatus.RUNNING, job.attempts + 1
            job.started_at = job.started_at or now
            job.heartbeat_at = now
            job.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
            return job

    def report(self, progress: float, stage: str, message: str = "") -> None:
        """Store progress and a heartbeat; raises JobCancelled when the user cancelled."""
        self.progress = max(0.0, min(1.0, progress))
        self.stage = stage[:64]
        if message:
            self.append_log(message)
        self.heartbeat_at = timezone.now()
        updated = Job.objects.filter(pk=self.pk, status=JobStatus.RUNNING).update(
            progress=self.progress, stage=self.stage, log=self.log, heartbeat_at=self.heartbeat_at
        )
        if not updated:
            raise JobCancelledError(self.pk)

    def append_log(self, message: str) -> None:
        line = f"{timezone.now():%H:%M:%S} {message}\n"
        # Keep the tail: the newest lines are the ones an operator needs.
        self.log = (self.log + line)[-self.LOG_LIMIT :]

    def finish(self, status: str, *, error: str = "", result: ModelVersion | None = None) -> bool:
        """Move to a final state once; returns False when it already was final."""
        fields: dict[str, Any] = {
            "status": status,
            "error": error[:4000],
            "finished_at": timezone.now(),
            "log": self.log,
        }
        if status == JobStatus.SUCCEEDED:
            fields.update(progress=1.0, stage="done")
        else:
            fields.update(stage=status)
        if result is not None:
            fields["result_version"] = result
        updated = Job.objects.filter(pk=self.pk, status__in=ACTIVE_JOB_STATUSES).update(**fields)
        if updated:
            for name, value in fields.items():
                setattr(self, name, value)
        return bool(updated)


class JobCancelledError(Exception):
    """The job was cancelled (or finished elsewhere) while it ran."""


class Chain(models.Model):
    """A saved pipeline of recipes started once on a source version: each step is a job
    whose result version feeds the next step. Its status is read from its jobs."""

    name = models.CharField(max_length=100, blank=True)
    source = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="chains")
    # [{"recipe": str, "params": {...}, "from": int}] - "from" is the step whose result is
    # this step's input (-1: the source; default: the previous step).
    steps = models.JSONField(default=list)
    calibration_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    eval_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Why the chain stopped when no job could be started for a step.
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"chain {self.pk} ({' -> '.join(s['recipe'] for s in self.steps)})"
