"""Operator API for sensor models: train one from an uploaded sensor dataset."""

from __future__ import annotations

from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Router, Schema, Status
from pydantic import StringConstraints

from accounts.models import Role
from accounts.permissions import require_role
from compression.schemas import ConflictOut, ErrorOut, JobOut, VersionOut
from compression.sensor import start_training
from compression.services import NAME_PATTERN, RegistryError

router = Router(tags=["sensor"])


# The registry's naming rule, in the schema so clients (and fuzzers) see it.
ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]


class SensorTrainIn(Schema):
    name: ModelName
    dataset: int
    eval_dataset: int | None = None
    params: dict[str, Any] = {}


class SensorTrainOut(Schema):
    model: int
    spec_version: VersionOut
    job: JobOut


@router.post(
    "/sensor-models",
    response={
        201: SensorTrainOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        404: ErrorOut,
        409: ConflictOut,
    },
    summary="Train a tiny sensor Transformer from a sensor dataset (int8, TFLite Micro)",
)
def train_sensor_model(request: HttpRequest, body: SensorTrainIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    try:
        version, job = start_training(
            user=request.user,
            name=body.name,
            dataset=body.dataset,
            eval_dataset=body.eval_dataset,
            params=body.params,
        )
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(
        201,
        {
            "model": version.model_id,
            "spec_version": VersionOut.from_version(version),
            "job": JobOut.from_job(job),
        },
    )
