"""Operator API for rollouts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from accounts.models import Role
from fleet import rollouts
from fleet.models import Bundle, Group, Rollout
from tinyfleet.api import require_role

router = Router(tags=["rollouts"])


class RolloutIn(Schema):
    bundle: str
    group: int
    waves: list[int] = [10, 50, 100]
    gates: dict[str, Any] = {}
    soak_seconds: int = 600
    start: bool = True


class RolloutOut(Schema):
    id: int
    bundle: str
    group: int
    status: str
    waves: list[int]
    current_wave: int
    wave_percent: int
    gates: dict[str, Any]
    soak_seconds: int
    reason: str
    last_evaluation: dict[str, Any]
    devices_in_wave: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    events: list[dict[str, Any]]


class RolloutList(Schema):
    items: list[RolloutOut]
    count: int


def _reason(request: HttpRequest) -> str:
    if not request.body or request.content_type != "application/json":
        return ""
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise HttpError(400, 'body must be JSON: {"reason": "..."}') from exc
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(reason, str) or len(reason) > 500:
        raise HttpError(400, "reason must be a string of at most 500 characters")
    return reason


def rollout_json(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": rollout.pk,
        "bundle": rollout.bundle_id,
        "group": rollout.group_id,
        "status": rollout.status,
        "waves": rollout.waves,
        "current_wave": rollout.current_wave,
        "wave_percent": rollout.wave_percent,
        "gates": {**rollout.gates},
        "soak_seconds": rollout.soak_seconds,
        "reason": rollout.reason,
        "last_evaluation": rollout.last_evaluation,
        "devices_in_wave": len(rollouts.wave_devices(rollout)) if rollout.is_active else 0,
        "created_at": rollout.created_at,
        "started_at": rollout.started_at,
        "finished_at": rollout.finished_at,
        "events": [
            {
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "reason": e.reason,
                "numbers": e.numbers,
            }
            for e in rollout.events.all()[:50]
        ],
    }


@router.post("/rollouts", response={201: RolloutOut, 400: dict, 403: dict, 409: dict})
def create_rollout(request: HttpRequest, body: RolloutIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    bundle = Bundle.objects.filter(pk=body.bundle).first()
    if bundle is None:
        raise HttpError(400, f"bundle {body.bundle!r} does not exist")
    group = Group.objects.filter(pk=body.group).first()
    if group is None:
        raise HttpError(400, f"group {body.group} does not exist")
    try:
        rollout = rollouts.create(
            user=request.user,
            bundle=bundle,
            group=group,
            waves=body.waves,
            gates=body.gates,
            soak_seconds=body.soak_seconds,
            start=body.start,
        )
    except rollouts.RolloutError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(201, rollout_json(rollout))


@router.get("/rollouts", response=RolloutList)
def list_rollouts(request: HttpRequest, status: str = "") -> dict[str, Any]:
    items = Rollout.objects.select_related("bundle", "group")
    if status:
        items = items.filter(status=status)
    found = list(items[:200])
    return {"items": [rollout_json(r) for r in found], "count": len(found)}


@router.get("/rollouts/{rollout_id}", response=RolloutOut)
def get_rollout(request: HttpRequest, rollout_id: int) -> dict[str, Any]:
    return rollout_json(get_object_or_404(Rollout, pk=rollout_id))


ACTIONS = {
    "pause": lambda r, u, why: rollouts.pause(r, u, why),
    "resume": lambda r, u, why: rollouts.resume(r, u),
    "promote": lambda r, u, why: rollouts.promote(r, u, why or "promoted by hand"),
    "rollback": lambda r, u, why: rollouts.rollback(r, u, why or "rolled back by hand"),
    "cancel": lambda r, u, why: rollouts.cancel(r, u),
}


@router.post(
    "/rollouts/{rollout_id}/{action}", response={200: RolloutOut, 403: dict, 404: dict, 409: dict}
)
def act(request: HttpRequest, rollout_id: int, action: str) -> Status[Any]:
    """Optional JSON body: {"reason": "..."} (kept in the rollout's history)."""
    require_role(request, Role.OPERATOR)
    if action not in ACTIONS:
        raise HttpError(404, f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    rollout = get_object_or_404(Rollout, pk=rollout_id)
    reason = _reason(request)
    try:
        rollout = ACTIONS[action](rollout, request.user, reason)
    except rollouts.RolloutError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(200, rollout_json(rollout))
