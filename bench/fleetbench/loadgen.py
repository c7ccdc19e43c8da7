"""Load generator children: polls and telemetry over keep-alive connections."""

from __future__ import annotations

import http.client
import json
import random
import resource
import threading
import time
import uuid
from typing import Any

from tinyfleet_agent._internal.client import DeviceClient
from tinyfleet_agent._internal.telemetry import Telemetry

from .common import API


def _poll_proc(
    port: int,
    work: list[tuple[str, str]],
    conns: int,
    mode: str,
    warmup: float,
    duration: float,
    go: Any,
    out: Any,
    template: str = "",
) -> None:
    """mode: "poll" (keep-alive GET /state, If-None-Match), "agent" (DeviceClient.state,
    a new connection per request), "telemetry" (keep-alive POST /telemetry)."""
    slices = [work[i::conns] for i in range(conns)]
    lock = threading.Lock()
    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors = [0]
    go.wait()
    t0 = time.time()
    w0, w1 = t0 + warmup, t0 + warmup + duration

    def run(items: list[tuple[str, str]]) -> None:
        mine: list[float] = []
        st: dict[int, int] = {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        clients = [DeviceClient(f"http://127.0.0.1:{port}", c) for c, _ in items]
        i = 0
        while True:
            cred, etag = items[i % len(items)]
            start = time.time()
            if start >= w1:
                break
            try:
                if mode == "agent":
                    status = clients[i % len(items)].state(etag).status
                elif mode == "poll":
                    conn.request(
                        "GET",
                        f"{API}/state",
                        headers={"Authorization": f"Bearer {cred}", "If-None-Match": etag},
                    )
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                else:
                    body = template.replace("@BATCH@", str(uuid.uuid4())).encode()
                    conn.request(
                        "POST",
                        f"{API}/telemetry",
                        body=body,
                        headers={
                            "Authorization": f"Bearer {cred}",
                            "Content-Type": "application/json",
                        },
                    )
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
            except (OSError, http.client.HTTPException, Exception):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    errors[0] += 1
                i += 1
                continue
            end = time.time()
            if w0 <= start and end <= w1:
                mine.append(end - start)
                st[status] = st.get(status, 0) + 1
            i += 1
        conn.close()
        with lock:
            lat.extend(mine)
            for k, v in st.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=run, args=(s,)) for s in slices if s]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    out.put({"lat": lat, "statuses": statuses, "errors": errors[0], "cpu": cpu})


def telemetry_template(bundle: str) -> str:
    """A realistic batch: the agent's own collector after a few requests and feedback."""
    telemetry = Telemetry(agent_version="0.1.0")
    telemetry.set_bundle(bundle, load_ms=41.5)
    rng = random.Random(7)
    for _ in range(25):
        n = rng.randint(5, 60)
        telemetry.record_request(bundle, rng.uniform(3, 40), [n], [rng.uniform(0.4, 1.0)])
    telemetry.record_error(bundle, "bad-request")
    telemetry.record_feedback(bundle, "ok", "ok")
    telemetry.record_feedback(bundle, "ok", "fault")
    telemetry.record_golden(bundle, True, 1.0)
    body = telemetry.snapshot_and_reset()
    body["batch_id"] = "@BATCH@"
    return json.dumps(body)
