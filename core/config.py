"""Settings values that are derived or kept on disk rather than read as they are."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

# How much longer than the hard task time limit Redis waits for an acknowledgement: a
# message may sit in a worker's prefetch buffer a while, and the ack itself takes time.
BROKER_VISIBILITY_MARGIN_S = 3600


def broker_visibility_timeout(task_time_limit_s: int) -> int:
    """Seconds Redis waits for a worker's ack before it delivers a task again.

    Tasks ack late (after they finish), so this must outlast the longest a task may run,
    the hard time limit: were it shorter, Redis would hand a job that is still running to
    a second worker, and the job would run twice.
    """
    return task_time_limit_s + BROKER_VISIBILITY_MARGIN_S


def read_or_create_secret(path: Path, nbytes: int = 50) -> str:
    """The secret kept in `path`, generated once (mode 0600) when the file is missing.

    A new secret is written to a temporary file beside `path` and linked into place, so no
    reader ever sees a partial file; when several processes start together on a fresh data
    directory, the first link wins and every process uses that one secret.
    """
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process published its secret first: use that one
        except OSError:  # a filesystem without hard links: last writer wins, still whole
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path.read_text().strip()
