"""Real image and director repositories built with python-tuf's Metadata API.

Keys are Ed25519 `CryptoSigner`s from securesystemslib. The image repository
has a 2-of-3 root and one key each for targets, snapshot and timestamp; the
director has its own root and one online targets key. `World` wires both to a
device (X25519 key pair) and an encrypted bundle, the way the server will.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined, unused-ignore]
from tinyfleet_agent.bundle import (
    BundleRecord,
    CipherParams,
    PipelineSpec,
    TrustedState,
    director_target_custom,
    encrypt_bundle,
    generate_content_key,
    image_target_custom,
    wrap_key,
)
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
TOP_ROLES = (Root.type, Timestamp.type, Snapshot.type, Targets.type)
CHUNK = 64 * 1024


def new_signers(n: int = 1) -> list[CryptoSigner]:
    """Return `n` fresh Ed25519 signers."""
    return [CryptoSigner.generate_ed25519() for _ in range(n)]


def sign(md: Metadata[Any], signers: list[CryptoSigner]) -> bytes:
    """Replace `md`'s signatures with `signers`' and return its bytes."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes()


def make_root(
    keys: dict[str, list[CryptoSigner]], thresholds: dict[str, int], version: int = 1
) -> Metadata[Root]:
    """Return an unsigned root delegating each top-level role to `keys`."""
    root = Root(version=version, expires=NOW + timedelta(days=365))
    for role in TOP_ROLES:
        for signer in keys.get(role, []):
            root.add_key(signer.public_key, role)
        root.roles[role].threshold = thresholds.get(role, 1)
    return Metadata(root)


@dataclass
class ImageRepo:
    """The image repository: every bundle is a target with its record."""

    keys: dict[str, list[CryptoSigner]]
    thresholds: dict[str, int]
    roots: list[bytes] = field(default_factory=list)
    targets: Metadata[Targets] = field(default_factory=lambda: Metadata(Targets(expires=LATER)))
    snapshot: Metadata[Snapshot] = field(default_factory=lambda: Metadata(Snapshot(expires=LATER)))
    timestamp: Metadata[Timestamp] = field(
        default_factory=lambda: Metadata(Timestamp(expires=LATER))
    )
    published: tuple[bytes, bytes, bytes] = (b"", b"", b"")

    @classmethod
    def create(cls) -> ImageRepo:
        """Return a repository with a 2-of-3 root and published empty targets."""
        keys = {Root.type: new_signers(3)} | {r: new_signers() for r in TOP_ROLES[1:]}
        repo = cls(keys, {Root.type: 2})
        repo.roots.append(sign(make_root(keys, repo.thresholds), keys[Root.type]))
        repo.publish()
        return repo

    def add_target(self, path: str, length: int, sha256: str, custom: dict[str, Any]) -> TargetFile:
        """Add (or replace) a target; call `publish()` afterwards."""
        target = TargetFile(length, {"sha256": sha256}, path, {"custom": custom})
        self.targets.signed.targets[path] = target
        return target

    def publish(
        self,
        *,
        targets_expires: datetime = LATER,
        snapshot_expires: datetime = LATER,
        timestamp_expires: datetime = LATER,
    ) -> tuple[bytes, bytes, bytes]:
        """Bump and sign targets, snapshot and timestamp; return their bytes."""
        tgt = self.targets.signed
        tgt.version += 1
        tgt.expires = targets_expires
        targets_bytes = sign(self.targets, self.keys[Targets.type])
        snap = self.snapshot.signed
        snap.version += 1
        snap.expires = snapshot_expires
        snap.meta["targets.json"] = MetaFile.from_data(tgt.version, targets_bytes, ["sha256"])
        snapshot_bytes = sign(self.snapshot, self.keys[Snapshot.type])
        ts = self.timestamp.signed
        ts.version += 1
        ts.expires = timestamp_expires
        ts.snapshot_meta = MetaFile.from_data(snap.version, snapshot_bytes, ["sha256"])
        timestamp_bytes = sign(self.timestamp, self.keys[Timestamp.type])
        self.published = (timestamp_bytes, snapshot_bytes, targets_bytes)
        return self.published

    def rotate(
        self,
        role: str,
        new_keys: list[CryptoSigner],
        *,
        threshold: int = 1,
        signers: list[CryptoSigner] | None = None,
    ) -> bytes:
        """Publish root N+1 giving `role` new keys; return its bytes.

        By default it is signed by the old and the new root keys, as a
        legitimate rotation is; pass `signers` to forge a bad one.
        """
        old_root_keys = self.keys[Root.type]
        self.keys = {**self.keys, role: new_keys}
        self.thresholds = {**self.thresholds, role: threshold}
        md = make_root(self.keys, self.thresholds, version=len(self.roots) + 1)
        if signers is None:
            signers = old_root_keys + [k for k in self.keys[Root.type] if k not in old_root_keys]
        data = sign(md, signers)
        self.roots.append(data)
        return data


@dataclass
class DirectorRepo:
    """The director: per-device targets metadata signed by an online key."""

    root_keys: list[CryptoSigner]
    targets_keys: list[CryptoSigner]
    root: bytes = b""
    versions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls) -> DirectorRepo:
        """Return a director with its own 1-of-1 root and online targets key."""
        repo = cls(new_signers(), new_signers())
        keys = {Root.type: repo.root_keys, Targets.type: repo.targets_keys}
        repo.root = sign(make_root(keys, {}), repo.root_keys)
        return repo

    def assign(
        self,
        device_id: str,
        target: TargetFile,
        custom: dict[str, Any],
        *,
        expires: datetime = LATER,
        signers: list[CryptoSigner] | None = None,
        version: int | None = None,
    ) -> bytes:
        """Return signed director targets naming `target` for `device_id`."""
        self.versions[device_id] = version or self.versions.get(device_id, 0) + 1
        named = TargetFile(target.length, dict(target.hashes), target.path, {"custom": custom})
        md = Metadata(Targets(version=self.versions[device_id], expires=expires))
        md.signed.targets[target.path] = named
        return sign(md, signers or self.targets_keys)


@dataclass
class Device:
    """A device identity with its X25519 decryption key."""

    device_id: str
    private_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)


def make_record(bundle_id: str, release: int, params: CipherParams) -> BundleRecord:
    """Return a realistic record for a text-classification bundle."""
    return BundleRecord(
        bundle_id=bundle_id,
        model="minilm-intent",
        version=f"1.{release}.0",
        release=release,
        runtime="onnxruntime",
        min_runtime_version="1.17",
        arch=("x86_64", "aarch64"),
        pipeline=PipelineSpec(
            task="text-classification",
            tokenizer="tokenizer.json",
            max_seq_len=128,
            pooling="mean",
            normalize=True,
            labels=("negative", "positive"),
            confidence_threshold=0.55,
        ),
        cipher=params,
        golden_set_sha256=hashlib.sha256(b"golden").hexdigest(),
        provenance={"parent": "fp32-onnx", "recipe": "int8-per-channel", "cosine": "0.996"},
    )


@dataclass
class Bundle:
    """One published bundle: payload, ciphertext, key, record and target."""

    record: BundleRecord
    key: bytes
    plaintext: Path
    ciphertext: Path
    target: TargetFile


@dataclass
class World:
    """Image repo + director + devices + the device's trusted state."""

    tmp: Path
    image: ImageRepo
    director: DirectorRepo
    device: Device
    other_device: Device
    state: TrustedState

    @classmethod
    def create(cls, tmp: Path) -> World:
        """Build both repositories and bootstrap the device's state."""
        image, director = ImageRepo.create(), DirectorRepo.create()
        state = TrustedState.bootstrap(image.roots[0], director.root)
        return cls(tmp, image, director, Device("dev-alice"), Device("dev-bob"), state)

    def publish_bundle(self, release: int = 1, size: int = 3 * CHUNK + 123) -> Bundle:
        """Encrypt a random payload, sign it as an image target, publish."""
        bundle_id = f"bundle-r{release}"
        plaintext = self.tmp / f"{bundle_id}.onnx"
        plaintext.write_bytes(hashlib.sha256(bundle_id.encode()).digest() * (size // 32 + 1))
        with plaintext.open("r+b") as f:
            f.truncate(size)
        ciphertext = self.tmp / f"{bundle_id}.enc"
        key = generate_content_key()
        params = encrypt_bundle(plaintext, ciphertext, key, chunk_size=CHUNK)
        record = make_record(bundle_id, release, params)
        target = self.image.add_target(
            f"bundles/{bundle_id}.enc",
            params.ciphertext_length,
            params.ciphertext_sha256,
            image_target_custom(record),
        )
        self.image.publish()
        return Bundle(record, key, plaintext, ciphertext, target)

    def assign(self, bundle: Bundle, device: Device | None = None, **kwargs: object) -> bytes:
        """Wrap the bundle key for `device` and return director metadata."""
        device = device or self.device
        wrapped = wrap_key(
            bundle.key,
            device.private_key.public_key(),
            bundle_id=bundle.record.bundle_id,
            release=bundle.record.release,
            device_id=device.device_id,
        )
        custom = director_target_custom(
            bundle.record, device_id=device.device_id, wrapped_key=wrapped
        )
        return self.director.assign(device.device_id, bundle.target, custom, **kwargs)  # type: ignore[arg-type]
