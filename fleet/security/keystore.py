"""Ed25519 signing keys: generation, sealing under the master key, signers, and root
keys kept offline in a file.

Only the image repository and director code sign; this module hands out
`CryptoSigner`s for the keys a role trusts and never writes a private key anywhere
but sealed into the database or, for `export_root_keys`, into a 0600 file the
operator takes away.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.db import transaction
from django.utils import timezone
from securesystemslib.signer import CryptoSigner, SSlibKey

from fleet.models import KeyStatus, SigningKey
from fleet.models.keys import TRUSTED_STATUSES, KeyRole, Repo
from fleet.security.masterkey import seal, unseal

SCHEME = "ed25519"
KEY_PURPOSE = "signing-key"
ROLES_OF: dict[str, tuple[str, ...]] = {
    Repo.IMAGE: (KeyRole.ROOT, KeyRole.TARGETS, KeyRole.SNAPSHOT, KeyRole.TIMESTAMP),
    # The device verifies only the director's root and its per-device targets.
    Repo.DIRECTOR: (KeyRole.ROOT, KeyRole.TARGETS),
}
ROOT_KEY_FILE_FORMAT = "tinyfleet-root-keys-v1"


class KeyUnavailableError(Exception):
    """The private keys needed to sign are offline or missing."""


def public_key(key: SigningKey) -> SSlibKey:
    """The TUF key object of a stored key (its keyid is the one in the root)."""
    return SSlibKey(key.keyid, "ed25519", SCHEME, {"public": key.public_key})


def _raw_public(private: Ed25519PrivateKey) -> str:
    return private.public_key().public_bytes_raw().hex()


def generate(repo: str, role: str, *, note: str = "") -> SigningKey:
    """Create a fresh key, its private half sealed under the master key."""
    private = Ed25519PrivateKey.generate()
    ssl_key = SSlibKey.from_crypto(private.public_key(), scheme=SCHEME)
    raw = private.private_bytes_raw()
    return SigningKey.objects.create(
        repo=repo,
        role=role,
        keyid=ssl_key.keyid,
        scheme=SCHEME,
        public_key=_raw_public(private),
        private_key_sealed=seal(raw, purpose=KEY_PURPOSE, bound_to=ssl_key.keyid),
        note=note,
    )


def signer_from_raw(key: SigningKey, raw: bytes) -> CryptoSigner:
    """A signer for `key` from its raw private bytes (checked against the public key)."""
    return CryptoSigner(Ed25519PrivateKey.from_private_bytes(raw), public_key(key))


def signer(key: SigningKey) -> CryptoSigner:
    """The signer of an online key.

    Raises:
        KeyUnavailableError: the private key is not in the database (offline).
        MasterKeyError: the sealed key does not open under the master key.
    """
    if key.private_key_sealed is None:
        raise KeyUnavailableError(f"{key.repo} {key.role} key {key.keyid[:12]} is offline")
    raw = unseal(bytes(key.private_key_sealed), purpose=KEY_PURPOSE, bound_to=key.keyid)
    return signer_from_raw(key, raw)


def trusted_keys(repo: str, role: str) -> list[SigningKey]:
    """Keys the current root trusts for `role` (online or offline)."""
    return list(SigningKey.objects.filter(repo=repo, role=role, status__in=TRUSTED_STATUSES))


def online_signers(repo: str, role: str) -> list[CryptoSigner]:
    """Signers of every trusted online key of `role`.

    Raises:
        KeyUnavailableError: no trusted key of the role is online.
    """
    signers = [signer(k) for k in trusted_keys(repo, role) if k.is_online]
    if not signers:
        raise KeyUnavailableError(f"no online {repo} {role} key; run tinyfleet_keys init")
    return signers


def signers_for(keyids: Iterable[str], extra: dict[str, CryptoSigner]) -> dict[str, CryptoSigner]:
    """Signers for whichever of `keyids` are online or given in `extra` (offline files)."""
    wanted = set(keyids)
    found = {kid: s for kid, s in extra.items() if kid in wanted}
    for key in SigningKey.objects.filter(keyid__in=wanted - set(found)):
        if key.is_online:
            found[key.keyid] = signer(key)
    return found


def retire(keys: Iterable[SigningKey], status: str) -> None:
    """Mark keys rotated out or revoked and destroy their sealed private halves.

    A key the root no longer trusts has no use; keeping it would only widen what a
    database thief could try against devices that lag behind.
    """
    now = timezone.now()
    for key in keys:
        key.status, key.rotated_at, key.private_key_sealed = status, now, None
        key.save(update_fields=["status", "rotated_at", "private_key_sealed"])


def export_root_keys(path: Path, repos: Iterable[str]) -> list[str]:
    """Write the online root private keys of `repos` to a new 0600 file, then delete
    them from the database (status `offline`). Returns the exported keyids.

    Raises:
        FileExistsError: `path` exists (never overwrite a key file).
        KeyUnavailableError: there is no online root key to export.
    """
    with transaction.atomic():
        keys = list(
            SigningKey.objects.select_for_update().filter(
                repo__in=list(repos), role=KeyRole.ROOT, status=KeyStatus.ACTIVE
            )
        )
        keys = [k for k in keys if k.is_online]
        if not keys:
            raise KeyUnavailableError("no online root key to export")
        entries = [_export_entry(k) for k in keys]
        body = json.dumps({"format": ROOT_KEY_FILE_FORMAT, "keys": entries}, indent=2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body + "\n")
            out.flush()
            os.fsync(out.fileno())
        # Only after the file is durable: a crash before this leaves the keys online.
        for key in keys:
            key.status, key.private_key_sealed = KeyStatus.OFFLINE, None
            key.save(update_fields=["status", "private_key_sealed"])
    return [k.keyid for k in keys]


def _export_entry(key: SigningKey) -> dict[str, str]:
    raw = signer(key).private_bytes  # PEM PKCS#8, the format securesystemslib reads back
    return {
        "repo": key.repo,
        "role": key.role,
        "keyid": key.keyid,
        "public": key.public_key,
        "private_pem": raw.decode(),
    }


def load_root_key_file(path: Path) -> dict[str, CryptoSigner]:
    """Signers from a file written by `export_root_keys`, checked against the database.

    Raises:
        ValueError: the file is not a root key file or holds a key we do not know.
        OSError: the file cannot be read.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != ROOT_KEY_FILE_FORMAT:
        raise ValueError(f"{path} is not a tinyfleet root key file")
    signers: dict[str, CryptoSigner] = {}
    for entry in data.get("keys", []):
        key = SigningKey.objects.filter(keyid=entry.get("keyid")).first()
        if key is None:
            raise ValueError(f"{path}: key {entry.get('keyid')!r} is unknown to this server")
        private = load_pem_private_key(entry["private_pem"].encode(), None)
        if not isinstance(private, Ed25519PrivateKey) or _raw_public(private) != key.public_key:
            raise ValueError(f"{path}: key {key.keyid[:12]} does not match its public key")
        signers[key.keyid] = CryptoSigner(private, public_key(key))
    return signers
