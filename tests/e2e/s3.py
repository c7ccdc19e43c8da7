"""Object storage for end-to-end tests: moto's standalone S3 server, and a proxy in front of
it that enforces the AWS rule moto does not.

Real S3 answers 400 ("Only one auth mechanism allowed") to a request that carries both a
presigned query signature and an Authorization header. moto accepts both, which is how a
client leaking its device credential onto a presigned redirect went unnoticed. The proxy
refuses such requests exactly like AWS and records what it saw, so tests can also assert
that no credential ever reached the object store. It also serves a second host name
(the "public endpoint" devices use) distinct from the internal one the server talks to.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"
DOUBLE_AUTH_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidArgument</Code>'
    b"<Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
    b"Signature query string parameter or the Authorization header should be specified"
    b"</Message></Error>"
)
# Hop-by-hop headers a proxy must not forward.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """`python -m moto.server` on its own port (real HTTP, a separate process)."""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1)  # noqa: S310 - local test server
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    def client(self, endpoint: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.url,
            region_name=REGION,
            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    presigned: bool
    status: int


@dataclass
class DoubleAuthProxy:
    """Forwards to `upstream` (moto), refusing double-authenticated requests with 400."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        presigned = "X-Amz-Signature" in query or "Signature" in query
        authorization = handler.headers.get("Authorization")
        body = _read_body(handler)
        if presigned and authorization is not None:
            self._answer(handler, 400, DOUBLE_AUTH_ERROR, "application/xml")
            self.seen.append(Seen(handler.command, handler.path, authorization, presigned, 400))
            return
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        # The Host header stays what the client signed (the public name); moto does not
        # check it, AWS would.
        conn.request(handler.command, handler.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.seen.append(
            Seen(handler.command, handler.path, authorization, presigned, response.status)
        )
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
        conn.close()

    @staticmethod
    def _answer(
        handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, kind: str
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes | None:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else None


def s3_storage_settings(bucket: str, endpoint: str, public_endpoint: str = "") -> dict[str, Any]:
    """The STORAGES["default"] entry tinyfleet.settings builds from the environment."""
    return {
        "BACKEND": "compression.s3_storage.PublicEndpointS3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint,
            "public_endpoint_url": public_endpoint or None,
            "signature_version": "s3v4",
            "region_name": REGION,
            "access_key": CREDS["AWS_ACCESS_KEY_ID"],
            "secret_key": CREDS["AWS_SECRET_ACCESS_KEY"],
            "file_overwrite": False,
            "default_acl": None,
            "querystring_expire": 600,
        },
    }


def s3_environment(bucket: str, endpoint: str, public_endpoint: str = "") -> dict[str, str]:
    """The same configuration as environment variables (for worker processes)."""
    env = {
        "TINYFLEET_S3_BUCKET": bucket,
        "TINYFLEET_S3_ENDPOINT_URL": endpoint,
        "TINYFLEET_S3_REGION": REGION,
        **CREDS,
    }
    if public_endpoint:
        env["TINYFLEET_S3_PUBLIC_ENDPOINT_URL"] = public_endpoint
    return env
