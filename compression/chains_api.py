"""Chain endpoints of the operator API: start a saved pipeline once, follow its steps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status

from accounts.models import Role
from accounts.permissions import require_role
from compression.chains import cancel_chain, chain_status, start_chain, step_numbers, step_views
from compression.models import Chain, ModelVersion
from compression.schemas import ErrorOut
from compression.services import RegistryError

router = Router(tags=["chains"])
ERRORS: dict[int, Any] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


class ChainIn(Schema):
    version: int
    steps: list[dict[str, Any]]
    name: str = ""
    calibration_dataset: int | None = None
    eval_dataset: int | None = None


class ChainStepOut(Schema):
    index: int
    recipe: str
    params: dict[str, Any]
    input_step: int
    status: str
    job: int | None
    result_version: int | None
    numbers: dict[str, Any]


class ChainOut(Schema):
    id: int
    name: str
    source: int
    status: str
    error: str
    steps: list[ChainStepOut]
    created_at: datetime


class ChainList(Schema):
    items: list[ChainOut]
    count: int


def chain_json(chain: Chain) -> dict[str, Any]:
    steps = step_views(chain)
    status, error = chain_status(chain, steps)
    return {
        "id": chain.pk,
        "name": chain.name,
        "source": chain.source_id,
        "status": status,
        "error": error,
        "created_at": chain.created_at,
        "steps": [
            {
                "index": s.index,
                "recipe": s.recipe,
                "params": s.params,
                "input_step": s.source_step,
                "status": s.status,
                "job": s.job.pk if s.job else None,
                "result_version": s.job.result_version_id if s.job else None,
                "numbers": step_numbers(s),
            }
            for s in steps
        ],
    }


@router.post(
    "/chains",
    response={201: ChainOut, 409: ErrorOut, **ERRORS},
    summary="Start a chain of recipes on a version (each step a job and a version)",
)
def create_chain(request: HttpRequest, body: ChainIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    source = get_object_or_404(ModelVersion, pk=body.version)
    try:
        chain = start_chain(
            user=request.user,
            source=source,
            steps=body.steps,
            name=body.name,
            calibration_dataset=body.calibration_dataset,
            eval_dataset=body.eval_dataset,
        )
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(201, chain_json(chain))


@router.get("/chains", response={200: ChainList, **ERRORS}, summary="List chains, newest first")
def list_chains(request: HttpRequest, limit: int = 50) -> dict[str, Any]:
    chains = list(Chain.objects.all()[: max(1, min(limit, 200))])
    return {"items": [chain_json(c) for c in chains], "count": Chain.objects.count()}


@router.get("/chains/{chain_id}", response={200: ChainOut, **ERRORS})
def get_chain(request: HttpRequest, chain_id: int) -> dict[str, Any]:
    return chain_json(get_object_or_404(Chain, pk=chain_id))


@router.post("/chains/{chain_id}/cancel", response={200: ChainOut, 409: ErrorOut, **ERRORS})
def cancel(request: HttpRequest, chain_id: int) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    chain = get_object_or_404(Chain, pk=chain_id)
    try:
        cancel_chain(request.user, chain)
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(200, chain_json(chain))
