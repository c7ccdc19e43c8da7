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
from accounts.permissions import require_role
from fleet.models import Bundle, Group, Rollout
from fleet.models.rollouts import DEFAULT_SOAK_SECONDS
from fleet.rollouts import engine as rollouts
from fleet.rollouts import rollout_plan

router = Router(tags=["rollouts"])


class RolloutIn(Schema):
    # The preferred bundle; `variants` lists further bundles of the same model (or all
    # of them, in order of preference, when `bundle` is left out or is its first item).
    bundle: str | None = None
    variants: list[str] = []
    group: int
    waves: list[int] = [10, 50, 100]
    gates: dict[str, Any] = {}
    soak_seconds: int = DEFAULT_SOAK_SECONDS
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
    # While running: the evidence (and soak) the current wave still waits for.
    waiting_for: list[str]
    devices_in_wave: int
    # Per variant, in order of preference: runtime, devices of the current wave it
    # serves, installed and failed among them.
    variants: list[dict[str, Any]]
    # Active group members no variant fits: {device, name, reason}.
    no_compatible_variant: list[dict[str, Any]]
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


def _variant_fields(rollout: Rollout) -> dict[str, Any]:
    bundles = rollout_plan.variant_bundles(rollout)
    if not rollout.is_active:
        progress = [{"bundle": b.pk, "runtime": (b.record or {}).get("runtime")} for b in bundles]
        return {"variants": progress, "no_compatible_variant": [], "devices_in_wave": 0}
    plan = rollouts.group_plan(rollout)
    wave = rollouts.wave_of(rollout, plan)
    since = rollout.started_at or rollout.created_at
    return {
        "variants": rollout_plan.variant_progress(bundles, wave, since),
        "no_compatible_variant": [
            {"device": str(d.pk), "name": d.name, "reason": reason}
            for d, reason in plan.incompatible
        ],
        "devices_in_wave": len(wave),
    }


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
        "waiting_for": rollouts.waiting_for(rollout),
        **_variant_fields(rollout),
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
    bundles = _bundles(_variant_ids(body.bundle, body.variants))
    group = Group.objects.filter(pk=body.group).first()
    if group is None:
        raise HttpError(400, f"group {body.group} does not exist")
    try:
        rollout = rollouts.create(
            user=request.user,
            bundle=bundles[0],
            variants=bundles[1:],
            group=group,
            waves=body.waves,
            gates=body.gates,
            soak_seconds=body.soak_seconds,
            start=body.start,
        )
    except rollouts.RolloutError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(201, rollout_json(rollout))


def _variant_ids(bundle: str | None, variants: list[str]) -> list[str]:
    """The bundle ids in order of preference, from `bundle` and `variants`."""
    if bundle is None:
        if not variants:
            raise HttpError(400, "give a bundle, or variants: [bundle ids]")
        return list(variants)
    if bundle in variants and variants[0] != bundle:
        raise HttpError(400, f"bundle {bundle!r} is listed in variants but not first")
    return list(variants) if bundle in variants else [bundle, *variants]


def _bundles(ids: list[str]) -> list[Bundle]:
    found = Bundle.objects.in_bulk(set(ids))
    missing = [i for i in ids if i not in found]
    if missing:
        raise HttpError(400, f"bundle {missing[0]!r} does not exist")
    return [found[i] for i in ids]


@router.get("/rollouts/preview", response={200: dict, 400: dict})
def preview_rollout(request: HttpRequest, group: int, bundles: str) -> Status[Any]:
    """Before starting: how many of the group's devices each variant would serve, and
    how many no variant fits. `bundles` is a comma-separated list, preferred first."""
    chosen = _bundles([b.strip() for b in bundles.split(",") if b.strip()])
    target = Group.objects.filter(pk=group).first()
    if target is None:
        raise HttpError(400, f"group {group} does not exist")
    try:
        rollout_plan.check_variants(chosen)
    except rollout_plan.VariantError as exc:
        return Status(400, {"error": str(exc)})
    return Status(200, rollout_plan.preview(target, chosen))


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
