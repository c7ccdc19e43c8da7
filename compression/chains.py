"""Job chains: a saved pipeline such as distill -> export-onnx -> onnx-int8-auto, started
once. Each step is an ordinary job (same validation, worker, lineage); when a step's job
succeeds the next one is queued on its result version; a failed or cancelled step stops
the chain. A chain's status is read from its jobs, so it can never disagree with them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from accounts.models import audit
from compression.compare import origin_figures
from compression.jobs import cancel_job, create_job
from compression.models import (
    Chain,
    Dataset,
    DatasetKind,
    Job,
    JobStatus,
    ModelVersion,
    VersionStatus,
)
from compression.recipes import CATALOGUE, RecipeError, check_params, check_recipe
from compression.services import MissingObjectError, RegistryError

log = logging.getLogger(__name__)

MAX_STEPS = 8

# Pipelines offered in the browser; "from" picks an earlier step's result as the input.
PRESETS: dict[str, dict[str, Any]] = {
    "distill-int8": {
        "title": "Distill (3 layers) -> ONNX -> INT8 auto",
        "steps": [
            {"recipe": "distill", "params": {"layers": 3}},
            {"recipe": "export-onnx"},
            {"recipe": "onnx-int8-auto"},
        ],
    },
    "distill-prune-int8-tflite": {
        "title": "Distill -> prune FFN -> ONNX -> INT8 auto, and TFLite of the pruned model",
        "steps": [
            {"recipe": "distill", "params": {"layers": 3}},
            {"recipe": "prune-ffn", "params": {"fraction": 0.25}},
            {"recipe": "export-onnx"},
            {"recipe": "onnx-int8-auto"},
            {"recipe": "tflite", "from": 1},
        ],
    },
    "distill-prune-heads-int8": {
        "title": "Distill -> prune 25% of heads (ONNX) -> INT8 auto",
        "steps": [
            {"recipe": "distill", "params": {"layers": 3}},
            {"recipe": "prune-heads", "params": {"fraction": 0.25}},
            {"recipe": "onnx-int8-auto"},
        ],
    },
}


@dataclass(frozen=True)
class StepView:
    index: int
    recipe: str
    params: dict[str, Any]
    source_step: int
    job: Job | None

    @property
    def status(self) -> str:
        return self.job.status if self.job else "waiting"


def _input_step(index: int, step: dict[str, Any]) -> int:
    return int(step.get("from", index - 1))


def normalize_steps(source: ModelVersion, steps: Any) -> list[dict[str, Any]]:
    """Check every step (recipe, parameters, input format) before anything runs.

    Raises:
        RegistryError: an empty or too long chain, an unknown recipe, a step whose input
            has the wrong format, or invalid parameters - naming the step.
    """
    if not isinstance(steps, list) or not steps:
        raise RegistryError("a chain needs a list of steps")
    if len(steps) > MAX_STEPS:
        raise RegistryError(f"a chain has at most {MAX_STEPS} steps")
    formats = [source.format]  # formats[i + 1] is step i's output
    clean: list[dict[str, Any]] = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict) or not isinstance(raw.get("recipe"), str):
            raise RegistryError(f'step {i + 1}: expected {{"recipe": ..., "params"?: ...}}')
        src = raw.get("from", i - 1)
        if not isinstance(src, int) or isinstance(src, bool) or not -1 <= src < i:
            raise RegistryError(f"step {i + 1}: 'from' must name an earlier step (or -1)")
        try:
            info = check_recipe(raw["recipe"], formats[src + 1])
            params = check_params(raw["recipe"], raw.get("params") or {})
            if i == 0 and info.precheck is not None:
                info.precheck(params, source.inspection or {})
        except (RecipeError, ValueError) as exc:
            raise RegistryError(f"step {i + 1} ({raw['recipe']}): {exc}") from exc
        clean.append({"recipe": raw["recipe"], "params": params, "from": src})
        formats.append(info.output_format)
    return clean


def start_chain(
    *,
    user: Any,
    source: ModelVersion,
    steps: Any,
    name: str = "",
    calibration_dataset: int | None = None,
    eval_dataset: int | None = None,
) -> Chain:
    """Validate the whole chain, save it and queue its first step.

    Raises:
        RegistryError: the source is not ready, a step is invalid, a dataset is missing.
    """
    if source.status != VersionStatus.READY:
        raise RegistryError(f"version {source.pk} is {source.status}; only ready versions run")
    clean = normalize_steps(source, steps)
    datasets = {}
    for role, ident in (("calibration", calibration_dataset), ("evaluation", eval_dataset)):
        if ident is None:
            continue
        found = Dataset.objects.filter(pk=ident).first()
        if found is None:
            raise MissingObjectError(f"{role} dataset {ident} does not exist")
        if found.kind != DatasetKind.TEXT and any(CATALOGUE[s["recipe"]].trains for s in clean):
            raise RegistryError(f"the {role} dataset must be JSONL text for training steps")
        datasets[role] = found
    with transaction.atomic():
        chain = Chain.objects.create(
            name=(name or "").strip()[:100],
            source=source,
            steps=clean,
            calibration_dataset=datasets.get("calibration"),
            eval_dataset=datasets.get("evaluation"),
            created_by=user,
        )
        audit(user, "chain.create", chain, steps=[s["recipe"] for s in clean])
        _queue_step(chain, 0, source)  # a refusal here rolls the chain back: nothing partial
    return chain


def _queue_step(chain: Chain, index: int, version: ModelVersion) -> Job:
    step = chain.steps[index]
    info = CATALOGUE[step["recipe"]]
    wants_calibration = info.trains or info.needs_calibration or step["recipe"] == "onnx-int8-auto"
    job = create_job(
        user=chain.created_by,
        version=version,
        recipe=step["recipe"],
        params=step["params"],
        eval_dataset=chain.eval_dataset_id,
        calibration_dataset=chain.calibration_dataset_id if wants_calibration else None,
    )
    Job.objects.filter(pk=job.pk).update(chain=chain, chain_step=index)
    return job


def advance(job_id: int) -> None:
    """After a chain job finished: queue the next step on its result, or stop the chain.

    Idempotent (a re-delivered task calls it again): the chain row is locked and a step
    that already has a job is not queued twice.
    """
    job = Job.objects.filter(pk=job_id).select_related("result_version").first()
    if job is None or job.chain_id is None or not job.is_finished:
        return
    with transaction.atomic():
        chain = Chain.objects.select_for_update().get(pk=job.chain_id)
        if job.status != JobStatus.SUCCEEDED or chain.error:
            return  # the failed/cancelled job is the chain's status
        index = (job.chain_step or 0) + 1
        if index >= len(chain.steps) or chain.jobs.filter(chain_step=index).exists():
            return
        src = _input_step(index, chain.steps[index])
        version = (
            chain.source
            if src < 0
            else chain.jobs.get(chain_step=src, status=JobStatus.SUCCEEDED).result_version
        )
        if version is None:
            chain.error = f"step {src + 1} left no result version"
            chain.save(update_fields=["error"])
            return
        try:
            with transaction.atomic():
                _queue_step(chain, index, version)
        except RegistryError as exc:
            chain.error = (
                f"step {index + 1} ({chain.steps[index]['recipe']}) could not start: {exc}"
            )
            chain.save(update_fields=["error"])
            log.info("chain %s stopped: %s", chain.pk, chain.error)


def step_views(chain: Chain) -> list[StepView]:
    jobs = {
        j.chain_step: j
        for j in chain.jobs.select_related("result_version", "version").order_by("id")
    }
    return [
        StepView(i, s["recipe"], s["params"], _input_step(i, s), jobs.get(i))
        for i, s in enumerate(chain.steps)
    ]


def chain_status(chain: Chain, steps: list[StepView] | None = None) -> tuple[str, str]:
    """(status, error): failed/cancelled when a step did, succeeded when all did."""
    steps = steps if steps is not None else step_views(chain)
    for step in steps:
        if step.job and step.job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return str(step.job.status), f"step {step.index + 1} ({step.recipe}): {step.job.error}"
    if chain.error:
        return "failed", chain.error
    if steps and all(s.job and s.job.status == JobStatus.SUCCEEDED for s in steps):
        return "succeeded", ""
    return ("running" if any(s.job for s in steps) else "queued"), ""


def cancel_chain(user: Any, chain: Chain) -> None:
    """Cancel the step that is queued or running; the chain stops with it.

    Raises:
        RegistryError: nothing is left to cancel (409).
    """
    active = [s.job for s in step_views(chain) if s.job and not s.job.is_finished]
    if not active:
        from compression.jobs import JobConflictError

        raise JobConflictError(f"chain {chain.pk} has no running step")
    for job in active:
        cancel_job(user, job)


def step_numbers(step: StepView) -> dict[str, Any]:
    """The headline numbers of a finished step's result, for the chain page and API."""
    version = step.job.result_version if step.job else None
    if version is None:
        return {}
    metrics = version.metrics or {}
    fid = metrics.get("fidelity") or {}
    bench = metrics.get("benchmark") or {}
    held = metrics.get("heldout_fidelity") or {}
    numbers = {
        "version": version.pk,
        "number": version.number,
        "format": version.format,
        "size_mb": round(version.size_bytes / 1e6, 2),
        "cosine_mean": fid.get("cosine_mean"),
        "nn_agreement": fid.get("nn_agreement"),
        "agreement": fid.get("agreement"),
        "latency_ms": bench.get("latency_p50_ms"),
        "latency_ratio": metrics.get("latency_ratio"),
        "torch_latency_ratio": (metrics.get("torch_latency") or {}).get("ratio"),
        "parameters": metrics.get("student_parameters"),
        "training_heldout_cosine": held.get("cosine_mean"),
    }
    origin = origin_figures(version)
    numbers["origin_fidelity"] = origin["origin_fidelity"]
    numbers["origin_nn"] = origin["origin_nn"]
    return {k: v for k, v in numbers.items() if v is not None}
