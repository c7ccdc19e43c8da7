"""Limits shared by the API schemas, so out-of-range numbers are a 400, not a database
error: ids are PostgreSQL `integer` columns; offsets stay far below SQLite's 64 bits."""

MAX_ID = 2**31 - 1
MAX_OFFSET = 10**9


def parse_id(raw: object) -> int | None:
    """A database id from a form or query string, or None when it cannot be one
    (pages answer 404 for those instead of failing on a ValueError or an overflow)."""
    text = str(raw or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None
