"""A software device for server-side tests: real keys, real proof of possession."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from django.test import Client

from fleet.devices.enrollment import proof_message

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


@dataclass
class FakeDevice:
    name: str = "pi-1"
    identity: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    decryption: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    credential: str = ""
    device_id: str = ""

    @property
    def identity_hex(self) -> str:
        return self.identity.public_key().public_bytes(*RAW).hex()

    @property
    def encryption_hex(self) -> str:
        return self.decryption.public_key().public_bytes(*RAW).hex()

    def enroll_body(self, token: str, **overrides: Any) -> dict[str, Any]:
        body = {
            "token": token,
            "name": self.name,
            "labels": {"site": "lab"},
            "facts": {"arch": "x86_64", "runtimes": {"onnxruntime": "1.31.1"}},
            "identity_public_key": self.identity_hex,
            "encryption_public_key": self.encryption_hex,
            "proof": self.identity.sign(proof_message(token, self.encryption_hex, self.name)).hex(),
        }
        return {**body, **overrides}

    def enroll(self, client: Client, token: str) -> Any:
        response = client.post(
            "/api/device/v1/enroll", self.enroll_body(token), content_type="application/json"
        )
        if response.status_code == 201:
            self.credential = response.json()["credential"]
            self.device_id = response.json()["device_id"]
        return response

    def client(self) -> Client:
        return Client(HTTP_AUTHORIZATION=f"Bearer {self.credential}")
