from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Profile, Role


class Command(BaseCommand):
    help = "Create a user with a role (viewer, operator or admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER)
        parser.add_argument("--password", required=True)
        parser.add_argument(
            "--update",
            action="store_true",
            help="if the user exists, set its password and role instead of failing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        existing = users.objects.filter(username=options["username"]).first()
        if existing is not None and not options["update"]:
            raise CommandError(f"user {options['username']!r} already exists")
        if existing is not None:
            existing.set_password(options["password"])
            existing.save(update_fields=["password"])
            Profile.objects.update_or_create(user=existing, defaults={"role": options["role"]})
            self.stdout.write(f"Updated {options['role']} {existing.get_username()!r}.")
            return
        user = users.objects.create_user(options["username"], "", options["password"])
        Profile.objects.update_or_create(user=user, defaults={"role": options["role"]})
        self.stdout.write(f"Created {options['role']} {user.get_username()!r}.")
