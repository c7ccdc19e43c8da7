"""Real local receivers for alert tests: an HTTP webhook endpoint and an SMTP server,
each in a thread of the test process (the Celery worker process talks to them)."""

from __future__ import annotations

import http.server
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    # Status codes to answer, in order; then 200 for ever.
    script: list[int] = field(default_factory=list)


@contextmanager
def webhook_receiver(script: list[int] | None = None) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="", script=list(script or []))
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                receiver.requests.append(Received(dict(self.headers.items()), body))
                code = receiver.script.pop(0) if receiver.script else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpReceiver:
    port: int = 0
    messages: list[bytes] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """Just enough SMTP (EHLO, MAIL, RCPT, DATA, QUIT) for Django's SMTP backend."""
    receiver = SmtpReceiver()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"220 test ESMTP\r\n")
            lines: list[bytes] = []
            in_data = False
            while line := self.rfile.readline():
                if in_data:
                    if line.rstrip(b"\r\n") == b".":
                        receiver.messages.append(b"".join(lines))
                        lines, in_data = [], False
                        self.wfile.write(b"250 queued\r\n")
                    else:
                        lines.append(line)
                    continue
                verb = line[:4].upper()
                if verb == b"DATA":
                    in_data = True
                    self.wfile.write(b"354 end with .\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 ok\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
