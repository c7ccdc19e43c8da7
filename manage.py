#!/usr/bin/env python
import os
import sys


def _unmigrated_database_hint(exc: Exception) -> str | None:
    """Say which database a command looked at when it holds no tinyfleet tables (another
    TINYFLEET_DATA_DIR or DATABASE_URL than the server's, or never migrated)."""
    text = str(exc)
    if "no such table" not in text and not ("relation" in text and "does not exist" in text):
        return None
    from django.conf import settings
    from django.db import connection

    where = connection.settings_dict
    name = where["NAME"] if connection.vendor == "sqlite" else f"{where['NAME']} on {where['HOST']}"
    source = (
        "DATABASE_URL"
        if os.environ.get("DATABASE_URL")
        else f"TINYFLEET_DATA_DIR={settings.DATA_DIR}"
    )
    return (
        f"error: the {connection.vendor} database {name} (from {source}) has no tinyfleet "
        f"tables ({text.splitlines()[0]}). Is this the data dir / DATABASE_URL the server "
        "uses? If so, run `python manage.py migrate` first."
    )


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tinyfleet.settings")
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError, ProgrammingError

    try:
        execute_from_command_line(sys.argv)
    except (OperationalError, ProgrammingError) as exc:
        hint = _unmigrated_database_hint(exc)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        sys.exit(2)
