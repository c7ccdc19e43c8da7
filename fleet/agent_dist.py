"""The server hands out its own agent: a wheel of `agent/` at a stable URL.

The agent is on no package index, so the enroll command installs it from the server it
enrolls with: `/agent/tinyfleet_agent-<version>-py3-none-any.whl`, no login needed (it
holds no secret; the enrollment token is what grants access). `make install` builds the
wheel into AGENT_WHEEL_DIR; if it is missing (a bare checkout, a fresh data dir) the
first request builds it once into the data dir and later requests reuse it.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)


def _agent_version() -> str:
    """The version the wheel gets: the one in agent/pyproject.toml, which pip builds from."""
    with (Path(settings.BASE_DIR) / "agent" / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


WHEEL_NAME = f"tinyfleet_agent-{_agent_version()}-py3-none-any.whl"


class AgentBuildError(Exception):
    """The agent wheel could not be built on this server."""


def wheel_url(server: str) -> str:
    return f"{server.rstrip('/')}/agent/{WHEEL_NAME}"


def wheel_path() -> Path:
    """The agent wheel, built on first use when `make install` did not build it.

    Raises:
        AgentBuildError: pip could not build `agent/` here.
    """
    for folder in (Path(settings.AGENT_WHEEL_DIR), Path(settings.DATA_DIR) / "agent-wheel"):
        if (folder / WHEEL_NAME).is_file():
            return folder / WHEEL_NAME
    cache = Path(settings.DATA_DIR) / "agent-wheel"
    cache.mkdir(exist_ok=True)
    # One build at a time (several web workers may ask at once); the others then find it.
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / WHEEL_NAME).is_file():
            _build_into(cache)
    return cache / WHEEL_NAME


def _build_into(cache: Path) -> None:
    with tempfile.TemporaryDirectory(dir=settings.TMP_DIR) as tmp:
        # Build from a clean copy: setuptools' in-tree build/ folder could hold stale
        # modules, and the checkout may be read-only.
        source = Path(tmp) / "agent"
        shutil.copytree(
            Path(settings.BASE_DIR) / "agent",
            source,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "--wheel-dir",
                tmp,
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        built = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not built.is_file():
            raise AgentBuildError(f"building the agent wheel failed: {done.stderr[-500:]}")
        # Move into place in one step: a reader never sees half a wheel.
        shutil.move(str(built), cache / f".{WHEEL_NAME}.part")
        (cache / f".{WHEEL_NAME}.part").replace(cache / WHEEL_NAME)
    log.info("built the agent wheel %s into %s", WHEEL_NAME, cache)


@require_GET
def agent_wheel(request: HttpRequest, filename: str) -> HttpResponseBase:
    if filename != WHEEL_NAME:
        return JsonResponse(
            {"error": f"no such agent file; this server hands out /agent/{WHEEL_NAME}"},
            status=404,
        )
    try:
        path = wheel_path()
    except (AgentBuildError, OSError, subprocess.TimeoutExpired) as exc:
        log.error("%s", exc)
        return JsonResponse(
            {"error": "the agent wheel is not available on this server"}, status=503
        )
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=WHEEL_NAME,
        content_type="application/zip",
    )
