"""S3 artifact storage whose presigned URLs are signed for the host devices reach.

The server talks to object storage on an internal endpoint (`http://minio:9000` inside
docker-compose); devices and browsers outside that network reach it by another name
(`https://s3.example.com`). A SigV4 signature covers the Host header, so a URL cannot be
rewritten after signing: it must be signed for the public endpoint from the start.
Signing is local computation (no request is made), so a client configured with the
public endpoint needs no network route to it.
"""

from __future__ import annotations

import threading
from typing import Any

from storages.backends.s3 import S3Storage
from storages.utils import clean_name


class PublicEndpointS3Storage(S3Storage):
    """S3Storage that presigns download URLs for `public_endpoint_url` when it is set."""

    def __init__(self, *, public_endpoint_url: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.public_endpoint_url = public_endpoint_url or None
        self._public_clients = threading.local()

    def _public_client(self) -> Any:
        client = getattr(self._public_clients, "client", None)
        if client is None:
            client = self._create_session().client(
                "s3",
                region_name=self.region_name,
                use_ssl=self.use_ssl,
                endpoint_url=self.public_endpoint_url,
                config=self.client_config,
                verify=self.verify,
            )
            self._public_clients.client = client
        return client

    def url(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        expire: int | None = None,
        http_method: str | None = None,
    ) -> str:
        if not self.public_endpoint_url or self.custom_domain:
            return str(super().url(name, parameters, expire, http_method))
        params = {
            **(parameters or {}),
            "Bucket": self.bucket_name,
            "Key": self._normalize_name(clean_name(name)),
        }
        return str(
            self._public_client().generate_presigned_url(
                "get_object",
                Params=params,
                ExpiresIn=self.querystring_expire if expire is None else expire,
                HttpMethod=http_method,
            )
        )
