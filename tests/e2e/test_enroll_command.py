"""The enroll command the groups page prints works when pasted, as printed, into a fresh
virtual environment: it installs the agent wheel the server hands out, enrolls against
the live server (on its random, non-default port) with the image root pinned, and runs.

Real pieces: the live server, an operator's logged-in session driving the page over
HTTP, `python -m venv`, pip (the agent's dependencies come from the pip cache or PyPI),
bash running the copied text, and the `tinyfleet-agent` it installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from fleet.agent_dist import WHEEL_NAME
from fleet.models import Device, Group
from tests.conftest import wait_for
from tests.services import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _copied_command(live_url: str, alice: Any, group: Group) -> str:
    """Log in as alice, press "Enrollment command" on the groups page over HTTP, and
    copy the text of the command box."""
    login = Client()
    login.force_login(alice)
    session = f"sessionid={login.cookies['sessionid'].value}"
    first = urllib.request.Request(  # noqa: S310 - the live test server
        f"{live_url}/groups/", headers={"Cookie": session}
    )
    with urllib.request.urlopen(first, timeout=30) as response:  # noqa: S310
        page = response.read().decode()
        csrf_cookie = re.search(r"csrftoken=([^;]+)", response.headers.get("Set-Cookie", ""))
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert csrf and csrf_cookie, page[:500]
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": csrf.group(1), "action": "token", "group": group.pk}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the live test server
        f"{live_url}/groups/",
        data=form,
        headers={
            "Cookie": f"{session}; csrftoken={csrf_cookie.group(1)}",
            "Referer": f"{live_url}/groups/",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer = response.read().decode()
    found = re.search(r'<pre class="command"[^>]*id="enroll-command">(.*?)</pre>', answer, re.S)
    assert found, answer[-2000:]
    return html.unescape(found.group(1))


def test_it_enrolls_a_fresh_venv_with_the_command_copied_from_the_page(
    live_server: Any, alice: Any, tmp_path: Path, settings: Any
) -> None:
    settings.DEVICE_POLL_INTERVAL = 2
    group = Group.objects.create(name="lab", selector="")
    command = _copied_command(live_server.url, alice, group)

    # The command names this server as the browser reached it, its wheel, and a pin.
    assert f"@ {live_server.url}/agent/{WHEEL_NAME}'" in command
    assert f"--server {live_server.url} " in command
    assert re.search(r"--root-fingerprint [0-9a-f]{64}", command)
    assert "--state-dir ~/.tinyfleet-agent" in command
    wheel_url = f"{live_server.url}/agent/{WHEEL_NAME}"
    with urllib.request.urlopen(wheel_url, timeout=60) as wheel:  # noqa: S310 - live server
        assert wheel.read(2) == b"PK"  # no login needed: a zip (the wheel)

    venv = tmp_path / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "VIRTUAL_ENV": str(venv),
        "TINYFLEET_AGENT_LISTEN": f"127.0.0.1:{port}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "http", "HTTP"))},
    }
    log = (tmp_path / "pasted.log").open("wb")
    pasted = subprocess.Popen(
        ["bash", "-c", command],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def output() -> str:
        return (tmp_path / "pasted.log").read_text(errors="replace")[-4000:]

    try:
        device = wait_for(lambda: Device.objects.first(), timeout=300, interval=1)
        state_dir = home / ".tinyfleet-agent"
        # The server records the device before the agent writes its answer down.
        wait_for(lambda: (state_dir / "device.json").is_file(), timeout=30)
        saved = json.loads((state_dir / "device.json").read_text())
        assert saved["server"] == live_server.url and saved["device_id"] == str(device.pk)

        def health() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as r:
                    return dict(json.loads(r.read()))
            except OSError:
                return None

        assert wait_for(health, timeout=60), output()
        # The running agent polls the server with the credential it enrolled with.
        wait_for(lambda: Device.objects.get(pk=device.pk).last_seen_at, timeout=30)
    except AssertionError:
        raise AssertionError(output()) from None
    finally:
        os.killpg(pasted.pid, signal.SIGTERM)
        try:
            pasted.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(pasted.pid, signal.SIGKILL)
