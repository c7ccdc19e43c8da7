"""Celery tasks: thin wrappers that claim a Job row, call pure pipeline code, and
record the outcome. Tasks take primary keys; progress lives in the database."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import current_app, shared_task
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from compression.archives import materialized
from compression.models import Job, JobCancelledError, JobStatus, ModelVersion, VersionStatus
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.inspect import inspect_model, tokenizer_info
from compression.pipeline.runner import ConverterCrashError
from compression.storage import local_copy, store_file

log = logging.getLogger(__name__)


def job_tmp_prefix(job_id: int) -> str:
    """Scratch folders of a job are named after it, so that the reaper can remove those a
    killed worker left behind (a TemporaryDirectory is only removed by its own process)."""
    return f"job-{job_id}-"


@shared_task(acks_late=True)
def inspect_version(job_id: int) -> None:
    job = Job.claim(job_id)
    if job is None:
        return
    version = job.version
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.INSPECTING)
    try:
        job.report(0.1, "fetching", f"inspecting {version.original_filename}")
        with heartbeats(job), materialized(version, job_tmp_prefix(job.pk)) as path:
            job.report(0.4, "inspecting")
            inspection = inspect_model(path, version.format)
            if version.is_zip and path.is_file():
                # A zip with one graph: its tokenizer files sit beside the .onnx.
                inspection["tokenizer"] = tokenizer_info(path.parent)
            job.report(0.7, "outputs", "classifying outputs (one probe run)")
            inspection = with_output_roles(path, version.format, inspection, version.model.task)
    except JobCancelledError:
        _mark_version(version, VersionStatus.FAILED, "inspection was cancelled")
        return
    except InvalidModelError as exc:
        _fail(job, version, str(exc))
        return
    except Exception as exc:
        log.exception("inspection of version %s crashed", version.pk)
        job.append_log(f"inspection crashed: {type(exc).__name__}: {exc}")
        _fail(job, version, failure_sentence(exc))
        return
    with transaction.atomic():
        fresh = ModelVersion.objects.select_for_update().get(pk=version.pk)
        pipeline = dict(fresh.pipeline or {})
        # An operator's choice (pipeline "output_chosen_by") outlives a re-inspection.
        if not pipeline.get("output_chosen_by"):
            pipeline["output"] = inspection.get("primary_output")
        ModelVersion.objects.filter(pk=version.pk).update(
            status=VersionStatus.READY, inspection=inspection, error="", pipeline=pipeline
        )
        job.append_log(f"{inspection.get('parameters', 0):,} parameters")
        job.append_log(f"primary output: {inspection.get('primary_output')}")
        job.finish(JobStatus.SUCCEEDED, result=version)


def with_output_roles(
    path: Path, fmt: str, inspection: dict[str, Any], task: str
) -> dict[str, Any]:
    """The inspection with each output's role and the task's primary output.

    ONNX graphs get one probe run in a converter subprocess (a model may crash its
    runtime); when the probe cannot run, the graph's own facts and shapes decide. The
    recipe to suggest (or why none applies) is added too.
    """
    from compression.pipeline.recommend import recommend_recipe

    annotated = _annotated(path, fmt, inspection, task)
    annotated["recommendation"] = recommend_recipe(annotated, task)
    return annotated


def _annotated(path: Path, fmt: str, inspection: dict[str, Any], task: str) -> dict[str, Any]:
    from compression.pipeline.assess import onnx_model_file
    from compression.pipeline.outputs import annotate_outputs, graph_roles
    from compression.pipeline.runner import run_in_subprocess

    if fmt != "onnx":
        return annotate_outputs(inspection, task)
    model_file = onnx_model_file(path)
    graph = graph_roles(model_file)
    try:
        probe = run_in_subprocess(
            "probe-outputs",
            {"model_path": model_file, "inputs": inspection.get("inputs") or []},
            timeout=300,
        )
    except ConverterCrashError as exc:
        probe = {"error": str(exc).splitlines()[0][:300]}
    return annotate_outputs(inspection, task, graph, probe)


def _fail(job: Job, version: ModelVersion, message: str) -> None:
    with transaction.atomic():
        job.append_log(message)
        job.finish(JobStatus.FAILED, error=message)
        _mark_version(version, VersionStatus.FAILED, message)


def _mark_version(version: ModelVersion, status: str, error: str) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(status=status, error=error)


@contextlib.contextmanager
def heartbeats(job: Job) -> Iterator[None]:
    """Keep the job's heartbeat fresh while this process works on it, also through long
    silent steps (an export, a benchmark). A killed worker takes this thread with it, so
    a stale heartbeat still means a dead worker."""
    stop = threading.Event()
    interval = max(1.0, settings.JOB_HEARTBEAT_TIMEOUT / 4)

    def beat() -> None:
        try:
            while not stop.wait(interval):
                Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
        finally:
            connection.close()  # this thread's own database connection

    thread = threading.Thread(target=beat, name=f"job-{job.pk}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@shared_task
def reap_stale_jobs() -> int:
    """Re-queue running jobs whose worker died (killed, out of memory, lost), or fail them
    after Job.MAX_ATTEMPTS tries; remove the scratch folders the dead attempt left.

    Brokers do not all redeliver a message whose worker was killed (the filesystem
    transport of the embedded default loses it; Redis only redelivers after its
    visibility timeout), so the heartbeat decides, the same way on every broker.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    reaped = 0
    for job in Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
        _remove_scratch(job.pk)
        silent = f"no heartbeat for {settings.JOB_HEARTBEAT_TIMEOUT} s"
        if job.attempts < Job.MAX_ATTEMPTS:
            # Claimed again by the next delivery (attempts + 1), run from the start.
            updated = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                status=JobStatus.QUEUED,
                log=job.log + f"{timezone.now():%H:%M:%S} worker lost ({silent}); re-queued\n",
            )
            if updated:
                _TASKS[job.kind].delay(job.pk)
                reaped += 1
            continue
        reason = f"worker stopped responding: {silent} (killed, out of memory or lost)"
        with transaction.atomic():
            job.append_log(reason)
            if job.finish(JobStatus.FAILED, error=f"{reason}; gave up after {job.attempts} tries"):
                reaped += 1
                if job.kind == "inspect":
                    _mark_version(job.version, VersionStatus.FAILED, reason)
    return reaped


def _remove_scratch(job_id: int) -> None:
    for folder in Path(settings.TMP_DIR).glob(f"{job_tmp_prefix(job_id)}*"):
        shutil.rmtree(folder, ignore_errors=True)


def _recipe_input_name(recipe: str) -> str:
    """The recipe function's first parameter: the model path it takes."""
    import inspect as pyinspect

    from compression.pipeline.runner import resolve

    func, _ = resolve(recipe)
    return next(iter(pyinspect.signature(func).parameters))


@shared_task(acks_late=True)
def run_compression(job_id: int) -> None:
    job = Job.claim(job_id)
    if job is not None:
        _run_compression(job)
    # Also on a re-delivery of a finished job: a crash between its end and this call
    # must not strand its chain. By name: the worker side does not import chains.
    if Job.objects.filter(pk=job_id, chain__isnull=False).exists():
        current_app.send_task("compression.chain_tasks.advance_chain", args=[job_id])


def _run_compression(job: Job) -> None:
    try:
        with heartbeats(job):
            if job.recipe == "sensor-transformer":
                _train_sensor(job)
            else:
                _compress(job)
    except JobCancelledError:
        return
    except (ConverterCrashError, InvalidModelError, ValueError, OSError) as exc:
        _drop_checkpoint_unless_interrupted(job, exc)
        tail = getattr(exc, "stderr_tail", "")
        if tail:
            job.append_log(tail[-3000:])
        with transaction.atomic():
            job.append_log(f"failed: {exc}")
            job.finish(JobStatus.FAILED, error=failure_sentence(exc))
    except Exception as exc:
        log.exception("compression job %s crashed", job.pk)
        job.append_log(f"failed: {type(exc).__name__}: {exc}")
        job.finish(JobStatus.FAILED, error=failure_sentence(exc))


def _drop_checkpoint_unless_interrupted(job: Job, exc: BaseException) -> None:
    from compression.checkpoints import discard, keeps_checkpoint
    from compression.recipes import CATALOGUE

    info = CATALOGUE.get(job.recipe)
    if info is not None and info.trains and not keeps_checkpoint(exc):
        discard(job)


def _compress(job: Job) -> None:
    from compression.derive import carry_tokenizer, package, store_derived
    from compression.pipeline.assess import find_tokenizer
    from compression.pipeline.runner import run_in_subprocess
    from compression.recipes import CATALOGUE

    parent = job.version
    info = CATALOGUE[job.recipe]

    def progress(fraction: float, stage: str, message: str) -> None:
        # The recipe owns 5-70% of the bar; evaluation and storing the rest.
        job.report(0.05 + 0.65 * fraction, stage, message)

    with (
        tempfile.TemporaryDirectory(dir=settings.TMP_DIR, prefix=job_tmp_prefix(job.pk)) as tmp,
        materialized(parent, job_tmp_prefix(job.pk)) as src,
    ):
        work = Path(tmp)
        out_dir = work / "out"
        out_dir.mkdir()
        job.report(0.02, "preparing", f"{job.recipe} on {parent}")
        kwargs: dict[str, object] = {
            _recipe_input_name(job.recipe): str(src),
            "output_dir": str(out_dir),
            "params": job.params,
        }
        tokenizer = find_tokenizer(src)
        kwargs["tokenizer_path"] = str(tokenizer) if tokenizer else None
        primary = (parent.pipeline or {}).get("output")
        if job.recipe == "onnx-int8-auto":
            kwargs["output"] = primary
        if job.calibration_dataset is not None:
            kwargs["calibration_path"] = _dataset_path(job.calibration_dataset, work)
        if (job.recipe == "onnx-int8-auto" or info.trains) and job.eval_dataset is not None:
            kwargs["eval_path"] = _dataset_path(job.eval_dataset, work)
        if info.trains:
            from compression.checkpoints import checkpoint_dir

            kwargs["checkpoint_dir"] = str(checkpoint_dir(job))
        result = run_in_subprocess(
            job.recipe, kwargs, timeout=settings.CELERY_TASK_SOFT_TIME_LIMIT, progress=progress
        )
        if info.trains:
            # Training finished: its output is in out_dir, the checkpoint has served.
            from compression.checkpoints import discard

            discard(job)
        for line in result.get("log", [])[-50:]:
            job.append_log(str(line))
        carry_tokenizer(src, out_dir)
        out_format = parent.format if job.recipe == "as-is" else info.output_format
        inspection = inspect_model(Path(result["output_path"]), out_format)
        inspection["tokenizer"] = tokenizer_info(out_dir)
        inspection = with_output_roles(
            Path(result["output_path"]), out_format, inspection, parent.model.task
        )
        child_primary = _child_primary(primary, inspection)
        job.report(0.72, "evaluating", f"measuring fidelity on output {child_primary}")
        golden = work / "golden.npz"
        eval_path = _dataset_path(job.eval_dataset, work) if job.eval_dataset else None
        assessment = run_in_subprocess(
            info.assessor,
            {
                "parent": str(src),
                "child": str(out_dir),
                "task": parent.model.task,
                "golden_path": str(golden),
                "dataset": eval_path,
                "dataset_kind": job.eval_dataset.kind if job.eval_dataset else None,
                "output": primary,
                "child_output": child_primary,
            },
            timeout=3600,
        )
        job.append_log(f"fidelity: {assessment['fidelity']}")
        as_is = job.recipe == "as-is"  # no new model: nothing to measure against the root
        to_origin = None if as_is else _fidelity_to_origin(job, out_dir, eval_path, child_primary)
        job.report(0.8, "benchmarking", "latency, throughput and memory in a fresh process")
        if as_is:
            _record_as_is(job, golden, assessment, Path(result["output_path"]))
            return
        speed = _benchmark(parent, src, Path(result["output_path"]), job)
        job.report(0.9, "storing")
        artifact = package(out_dir, work)
        golden_key = f"golden/{assessment['golden']['sha256']}.npz"
        store_file(golden_key, golden)
        metrics = {
            **result.get("metrics", {}),
            **speed,
            "fidelity": assessment["fidelity"],
            **({"fidelity_to_origin": to_origin} if to_origin else {}),
            "evaluated_on": assessment["inputs"],
            "examples": assessment["examples"],
            **(
                {"reference_confidence": assessment["reference_confidence"]}
                if "reference_confidence" in assessment
                else {}
            ),
            "size_bytes": artifact.stat().st_size,
            "size_ratio": artifact.stat().st_size / max(parent.size_bytes, 1),
        }
        store_derived(
            job,
            artifact,
            info.output_format,
            metrics=metrics,
            pipeline={**parent.pipeline, **result.get("pipeline", {}), "output": child_primary},
            golden_key=golden_key,
            golden_sha256=assessment["golden"]["sha256"],
            inspection=inspection,
        )


def _fidelity_to_origin(
    job: Job, child: Path, eval_path: str | None, child_primary: str | None
) -> dict[str, Any] | None:
    """The child measured against the root of its lineage, when that is not its parent
    (a chain's later steps). None for a direct child: its fidelity already is that."""
    from compression.pipeline.runner import ConverterCrashError, run_in_subprocess

    parent = job.version
    if parent.parent_id is None:
        return None
    origin = parent.lineage()[0]
    job.report(0.76, "evaluating", f"measuring fidelity to the original, {origin}")
    try:
        with materialized(origin, job_tmp_prefix(job.pk)) as origin_path:
            record: dict[str, Any] = run_in_subprocess(
                "fidelity-to-origin",
                {
                    "origin": str(origin_path),
                    "child": str(child),
                    "task": parent.model.task,
                    "dataset": eval_path,
                    "dataset_kind": job.eval_dataset.kind if job.eval_dataset else None,
                    "output": (origin.pipeline or {}).get("output"),
                    "child_output": child_primary,
                },
                timeout=3600,
            )
    except (ConverterCrashError, OSError, ValueError) as exc:
        # The step itself succeeded; only this extra figure is missing, and says why.
        record = {"measured": False, "reason": failure_sentence(exc)}
    record["origin_version"] = origin.number
    job.append_log(f"fidelity to the original v{origin.number}: {record}")
    return record


def _record_as_is(job: Job, golden: Path, assessment: dict[str, Any], model_file: Path) -> None:
    """`as-is`: the golden set and benchmark go onto the version itself (no new bytes)."""
    version = job.version
    speed: dict[str, object] = {}
    if model_file.suffix in (".onnx", ".tflite"):
        speed["benchmark"] = summarize_benchmark(_bench(model_file, job))
    golden_key = f"golden/{assessment['golden']['sha256']}.npz"
    store_file(golden_key, golden)
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        ModelVersion.objects.filter(pk=version.pk).update(
            golden_key=golden_key,
            golden_sha256=assessment["golden"]["sha256"],
            metrics={**(locked.metrics or {}), **speed, "evaluated_on": assessment["inputs"]},
        )
        job.append_log(f"golden set recorded on {version} ({assessment['golden']['count']})")
        Job.objects.filter(pk=job.pk).update(metrics=speed)
        job.finish(JobStatus.SUCCEEDED, result=version)


def _child_primary(parent_primary: str | None, inspection: dict[str, Any]) -> str | None:
    """The parent's primary output when the child kept it (recipes keep every output);
    else the child's own choice (a converter renamed or pooled it)."""
    names = [str(o.get("name")) for o in inspection.get("outputs") or []]
    if parent_primary in names:
        return parent_primary
    chosen = inspection.get("primary_output")
    return str(chosen) if chosen else parent_primary


# Exception types whose message already says what to change; anything else is a bug or
# a crash, and the sentence says so.
_ACTIONABLE = (
    "QuantizeError",
    "DatasetError",
    "InvalidModelError",
    "FidelityTargetError",
    "RecipeError",
    "ShapeMismatchError",
    "GoldenError",
    "DistillError",
    "QatError",
)


def failure_sentence(exc: BaseException) -> str:
    """One sentence a person can act on; the traceback stays in the job log."""
    from compression.pipeline.runner import ConverterTimeoutError

    if isinstance(exc, ConverterTimeoutError):
        return (
            "The converter ran past its time limit and was stopped: try a smaller model, "
            "fewer candidates or evaluation samples, or raise the job time limit."
        )
    text = str(exc)
    if isinstance(exc, ConverterCrashError):
        first = text.splitlines()[0] if text else ""
        if " failed: " not in first:
            return (
                "The converter process crashed or ran out of memory "
                f"({first.split(' converter ', 1)[-1]}); try a smaller model or more memory. "
                "Details are in the log."
            )
        kind, _, message = first.split(" failed: ", 1)[1].partition(": ")
        if kind in _ACTIONABLE and message:
            return message
        return _generic(kind, message)
    if isinstance(exc, InvalidModelError) or type(exc).__name__ in _ACTIONABLE:
        return text.splitlines()[0] if text else type(exc).__name__
    return _generic(type(exc).__name__, text)


def _generic(kind: str, message: str) -> str:
    detail = message.splitlines()[0][:200] if message else kind
    return (
        f"The job stopped on an unexpected error ({kind}: {detail}). The model may use "
        "inputs or operators this recipe does not handle: try another recipe, or publish "
        "the version as it is. Details are in the log."
    )


def _dataset_path(dataset: object, work: Path) -> str:
    from compression.models import Dataset

    assert isinstance(dataset, Dataset)
    target = work / f"dataset-{dataset.pk}{Path(dataset.storage_key).suffix}"
    with local_copy(dataset.storage_key) as path:
        shutil.copyfile(path, target)
    return str(target)


def summarize_benchmark(raw: dict[str, object]) -> dict[str, object]:
    """The headline numbers (batch 1, sequence 64 for text) plus the full measurement."""
    latency = raw.get("latency_batch1") or {}
    assert isinstance(latency, dict)
    headline: dict[str, object] = latency.get("64") or next(iter(latency.values()), {})
    rss = raw.get("peak_rss_bytes") or 0
    assert isinstance(rss, int)
    return {
        "latency_p50_ms": headline.get("p50_ms"),
        "latency_p95_ms": headline.get("p95_ms"),
        "load_s": raw.get("load_s"),
        "throughput_items_per_s": raw.get("throughput_items_per_s"),
        "peak_rss_mb": round(rss / 2**20, 1),
        # The worker's scratch path means nothing to anyone and would end up in the
        # bundle's signed provenance: keep only the measurements.
        "detail": {k: v for k, v in raw.items() if k != "model_path"},
    }


def _benchmark(
    parent: ModelVersion, parent_path: Path, child_file: Path, job: Job
) -> dict[str, object]:
    """Benchmark the child in a fresh process; time it against the parent interleaved."""
    from compression.pipeline.assess import onnx_model_file
    from compression.pipeline.runner import run_in_subprocess

    if child_file.suffix not in (".onnx", ".tflite"):
        return {}
    speed: dict[str, object] = {"benchmark": summarize_benchmark(_bench(child_file, job))}
    if parent.format == "onnx" and child_file.suffix == ".onnx":
        if not parent.metrics.get("benchmark"):
            parent_raw = _bench(Path(onnx_model_file(parent_path)), job)
            ModelVersion.objects.filter(pk=parent.pk).update(
                metrics={**parent.metrics, "benchmark": summarize_benchmark(parent_raw)}
            )
        ratio = run_in_subprocess(
            "compare-latency", {"parent": str(parent_path), "child": str(child_file)}, timeout=1800
        )
        speed["latency_ratio"] = round(ratio["ratio"], 4)
        job.append_log(f"latency vs parent (interleaved, batch 1): {ratio['ratio']:.3f}x")
    return speed


BENCH_SEQUENCES = ((16, 64, 128), (16, 64), (16,))


def _bench(model_file: Path, job: Job) -> dict[str, object]:
    """Benchmark at the usual sequence lengths, dropping those the model cannot take
    (short position tables); the job log says which were skipped."""
    from compression.pipeline.benchmark import benchmark_model

    error: Exception | None = None
    for sequences in BENCH_SEQUENCES:
        try:
            result: dict[str, object] = benchmark_model(model_file, sequences=sequences)
            return result
        except ConverterCrashError as exc:
            error = exc
            job.append_log(f"benchmark at sequences {sequences} failed; trying shorter ones")
    assert error is not None
    raise error


# What the reaper re-queues, per job kind.
_TASKS = {"inspect": inspect_version, "compress": run_compression}


def _train_sensor(job: Job) -> None:
    """Train a sensor model in a converter subprocess, store the trained version.

    Raises what the subprocess raises (ConverterCrashError, ...): run_compression
    turns it into a failed job.
    """
    from compression.derive import package, store_derived
    from compression.models import Format
    from compression.pipeline.runner import run_in_subprocess

    assert job.calibration_dataset is not None
    # Scratch named after the job: the reaper removes what a killed worker leaves.
    prefix = job_tmp_prefix(job.pk)
    with (
        tempfile.TemporaryDirectory(dir=settings.TMP_DIR, prefix=prefix) as tmp,
        materialized(job.version, prefix) as spec,
    ):
        work = Path(tmp)
        out_dir = work / "out"
        out_dir.mkdir()

        def progress(fraction: float, stage: str, message: str) -> None:
            job.report(0.02 + 0.9 * fraction, stage, message)

        job.report(0.01, "preparing", f"training a sensor model from {job.calibration_dataset}")
        result = run_in_subprocess(
            "sensor-transformer",
            {
                "spec_path": str(spec),
                "output_dir": str(out_dir),
                "params": job.params,
                "train_path": _dataset_path(job.calibration_dataset, work),
                "eval_path": _dataset_path(job.eval_dataset, work) if job.eval_dataset else None,
            },
            timeout=settings.CELERY_TASK_SOFT_TIME_LIMIT,
            progress=progress,
        )
        for line in result.get("log", [])[-50:]:
            job.append_log(str(line))
        job.report(0.95, "storing")
        golden = out_dir / "golden.npz"
        golden_sha = result["metrics"]["golden"]["sha256"]
        golden_key = f"golden/{golden_sha}.npz"
        store_file(golden_key, golden)
        golden.unlink()  # the bundle carries the golden set separately
        artifact = package(out_dir, work)
        metrics = {**result["metrics"], "size_bytes": artifact.stat().st_size}
        store_derived(
            job,
            artifact,
            Format.TFLITE,
            metrics=metrics,
            pipeline=result.get("pipeline", {}),
            golden_key=golden_key,
            golden_sha256=golden_sha,
            inspection=inspect_model(Path(result["output_path"]), Format.TFLITE),
        )
