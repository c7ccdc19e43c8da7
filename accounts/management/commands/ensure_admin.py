import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.models import Profile, Role
from core.env import env_str


class Command(BaseCommand):
    help = (
        "Create the first admin if no user exists. The password comes from "
        "TINYFLEET_ADMIN_PASSWORD or is generated and printed once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default=env_str("TINYFLEET_ADMIN_USER", "admin"))

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.exists():
            return
        password = env_str("TINYFLEET_ADMIN_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        user = users.objects.create_superuser(options["username"], "", password)
        Profile.objects.update_or_create(user=user, defaults={"role": Role.ADMIN})
        if generated:
            self.stdout.write(
                self.style.WARNING(
                    f"Created admin user {user.get_username()!r} with password: {password}\n"
                    "It is shown only this once; change it after logging in."
                )
            )
        else:
            self.stdout.write(f"Created admin user {user.get_username()!r}.")
