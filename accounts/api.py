"""API tokens and identity endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Path, Router, Schema, Status
from ninja.errors import HttpError

from accounts.models import ApiToken, Role, audit, has_role, role_of
from accounts.validation import MAX_ID

router = Router(tags=["accounts"])


class MeOut(Schema):
    username: str
    role: str | None


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    user: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


class TokenList(Schema):
    items: list[TokenOut]
    count: int


class TokenIn(Schema):
    # Not blank once stripped, at most 100 characters (the model's column).
    name: str = Field(..., min_length=1, max_length=100, pattern=r"\S")


class NewTokenOut(TokenOut):
    token: str


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "user": token.user.get_username(),
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "revoked": not token.is_active,
    }


@router.get("/me", response=MeOut)
def me(request: HttpRequest) -> dict[str, Any]:
    return {"username": request.user.get_username(), "role": role_of(request.user)}


@router.get("/tokens", response=TokenList, summary="Your tokens (admins: everyone's)")
def list_tokens(request: HttpRequest) -> dict[str, Any]:
    tokens = ApiToken.objects.visible_to(request.user).select_related("user")
    return {"items": [token_json(t) for t in tokens], "count": tokens.count()}


@router.post(
    "/tokens", response={201: NewTokenOut, 400: dict}, summary="Create a token (shown once)"
)
def create_token(request: HttpRequest, body: TokenIn) -> Status[Any]:
    name = body.name.strip()
    if not name or len(name) > 100:
        raise HttpError(400, "name must be 1-100 characters")
    token, raw = ApiToken.issue(request.user, name)
    audit(request.user, "token.create", token, name=name)
    return Status(201, {**token_json(token), "token": raw})


@router.delete("/tokens/{token_id}", response={204: None, 403: dict, 404: dict})
def revoke_token(request: HttpRequest, token_id: int = Path(..., ge=1, le=MAX_ID)) -> Status[Any]:
    token = get_object_or_404(ApiToken.objects.select_related("user"), pk=token_id)
    if token.user_id != request.user.pk and not has_role(request.user, Role.ADMIN):
        raise HttpError(403, "you can only revoke your own tokens")
    token.revoke()
    audit(request.user, "token.revoke", token, owner=token.user.get_username())
    return Status(204, None)
