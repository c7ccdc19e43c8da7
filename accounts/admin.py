from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Model
from django.forms import ModelForm
from django.http import HttpRequest

from accounts.models import ApiToken, AuditEvent, Profile, audit


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "role")
    list_editable = ("role",)

    def save_model(self, request: HttpRequest, obj: Profile, form: ModelForm, change: bool) -> None:
        # Role changes made here are audited like every other change of who may do what.
        before = Profile.objects.filter(pk=obj.pk).values_list("role", flat=True).first()
        super().save_model(request, obj, form, change)
        if before != obj.role:
            audit(request.user, "role.change", obj.user, role=obj.role, before=before, via="admin")

    def delete_model(self, request: HttpRequest, obj: Profile) -> None:
        audit(request.user, "role.change", obj.user, role=None, before=obj.role, via="admin")
        super().delete_model(request, obj)


# Superuser, staff and active flags decide access as much as the role does.
_ACCESS_FLAGS = ("is_superuser", "is_staff", "is_active")
User = get_user_model()


class AuditedUserAdmin(UserAdmin):
    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        before = User.objects.filter(pk=obj.pk).values(*_ACCESS_FLAGS).first() if obj.pk else None
        super().save_model(request, obj, form, change)
        after = {flag: getattr(obj, flag) for flag in _ACCESS_FLAGS}
        if before != after:
            audit(request.user, "user.access-change", obj, after=after, before=before, via="admin")


admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("digest", "prefix")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is evidence, so nobody edits or deletes it here."""

    list_display = ("at", "actor_name", "action", "object_type", "object_id")
    list_filter = ("action",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
