from typing import Any

from django.http import HttpRequest

from accounts.models import Role, has_role, role_of


def role(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    return {
        "user_role": role_of(user),
        "can_operate": has_role(user, Role.OPERATOR),
        "is_admin": has_role(user, Role.ADMIN),
    }
