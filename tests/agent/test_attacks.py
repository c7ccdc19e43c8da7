"""One test per attack on the bundle path, named after the attack.

Each builds real image and director repositories (tuf_fixtures.py), plays the
attacker, and checks the device refuses with the right typed error and keeps
its trusted state (and so its installed model) untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signature  # type: ignore[attr-defined, unused-ignore]
from tinyfleet_agent.bundle import (
    Assignment,
    BadSignatureError,
    BadVersionError,
    BundleError,
    BundleRecord,
    ExpiredMetadataError,
    InconsistentMetadataError,
    InvalidRecordError,
    KeyUnwrapError,
    LengthExceededError,
    MalformedMetadataError,
    MixAndMatchError,
    PayloadExtendedError,
    PayloadTamperedError,
    PayloadTruncatedError,
    RollbackError,
    TrustedState,
    WrongDeviceError,
    decrypt_bundle,
    director_target_custom,
    download_capped,
    generate_content_key,
    resolve_assignment,
    unwrap_key,
    update_root,
    update_root_chain,
    verify_director_targets,
    verify_image_metadata,
    wrap_key,
)
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Metadata,
    Root,
    TargetFile,
    Targets,
    Timestamp,
)

from .tuf_fixtures import CHUNK, NOW, Bundle, Device, World, make_root, new_signers, sign


def resolve(
    world: World, director: bytes, *, device: Device | None = None, image: Any = None
) -> Assignment:
    ts, snap, tgt = image or world.image.published
    return resolve_assignment(
        world.state,
        timestamp=ts,
        snapshot=snap,
        targets=tgt,
        director_targets=director,
        device_id=(device or world.device).device_id,
        now=NOW,
    )


def install(
    world: World, bundle: Bundle, assignment: Assignment, device: Device | None = None
) -> Path:
    """The device's order: capped download, digest, unwrap, decrypt, record."""
    device = device or world.device
    downloaded = world.tmp / "download.enc"
    with bundle.ciphertext.open("rb") as body:
        download_capped(body, downloaded, assignment.length, expected_sha256=assignment.sha256)
    key = unwrap_key(
        assignment.wrapped_key,
        device.private_key,
        bundle_id=assignment.bundle_id,
        release=assignment.release,
        device_id=device.device_id,
    )
    out = world.tmp / "installed.onnx"
    decrypt_bundle(downloaded, out, key, assignment.record.cipher, check_ciphertext_hash=False)
    world.state.record_installed(assignment.record.model, assignment.release)
    return out


def download(world: World, src: Path, assignment: Assignment) -> int:
    with src.open("rb") as body:
        return download_capped(
            body, world.tmp / "dl", assignment.length, expected_sha256=assignment.sha256
        )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


# --- happy path ---------------------------------------------------------------


def test_it_installs_an_assigned_bundle_end_to_end(world: World, bundle: Bundle) -> None:
    assignment = resolve(world, world.assign(bundle))
    assert assignment.record == bundle.record
    assert assignment.target_path == "bundles/bundle-r1.enc"
    out = install(world, bundle, assignment)
    assert out.read_bytes() == bundle.plaintext.read_bytes()
    assert world.state.installed_release("minilm-intent") == 1
    assert leftovers(world.tmp) == []


def test_it_persists_and_restores_trusted_state(world: World, bundle: Bundle) -> None:
    install(world, bundle, resolve(world, world.assign(bundle)))
    restored = TrustedState.from_json(world.state.to_json())
    assert restored.to_json() == world.state.to_json()
    assert restored.targets_version == world.state.targets_version > 0
    with pytest.raises(MalformedMetadataError):
        TrustedState.from_json(b'{"schema": 1}')


# --- payload attacks -------------------------------------------------------------


@pytest.fixture
def assigned(world: World, bundle: Bundle) -> tuple[Assignment, bytes]:
    assignment = resolve(world, world.assign(bundle))
    key = unwrap_key(
        assignment.wrapped_key,
        world.device.private_key,
        bundle_id=assignment.bundle_id,
        release=assignment.release,
        device_id=world.device.device_id,
    )
    return assignment, key


@pytest.mark.parametrize("offset", [0, CHUNK + 20, -1])
@pytest.mark.parametrize("check_hash", [True, False])
def test_payload_tampering_flipped_byte(
    world: World, bundle: Bundle, assigned: tuple[Assignment, bytes], offset: int, check_hash: bool
) -> None:
    assignment, key = assigned
    blob = bytearray(bundle.ciphertext.read_bytes())
    blob[offset] ^= 0x01
    bundle.ciphertext.write_bytes(bytes(blob))
    with pytest.raises(PayloadTamperedError) as err:
        decrypt_bundle(
            bundle.ciphertext,
            world.tmp / "out",
            key,
            assignment.record.cipher,
            check_ciphertext_hash=check_hash,
        )
    assert err.value.reason == "payload-tampered"
    assert not (world.tmp / "out").exists() and leftovers(world.tmp) == []
    with pytest.raises(PayloadTamperedError):
        download(world, bundle.ciphertext, assignment)


@pytest.mark.parametrize("keep", [0, CHUNK + 16, CHUNK + 40, -1])
def test_payload_tampering_truncated(
    world: World, bundle: Bundle, assigned: tuple[Assignment, bytes], keep: int
) -> None:
    assignment, key = assigned
    blob = bundle.ciphertext.read_bytes()
    bundle.ciphertext.write_bytes(blob[:keep])
    with pytest.raises(PayloadTruncatedError) as err:
        decrypt_bundle(bundle.ciphertext, world.tmp / "out", key, assignment.record.cipher)
    assert err.value.reason == "payload-truncated"
    with pytest.raises(PayloadTruncatedError):
        download(world, bundle.ciphertext, assignment)
    assert leftovers(world.tmp) == []


@pytest.mark.parametrize("extra", [b"\x00", b"A" * (CHUNK + 16)])
def test_payload_tampering_appended(
    world: World, bundle: Bundle, assigned: tuple[Assignment, bytes], extra: bytes
) -> None:
    assignment, key = assigned
    with bundle.ciphertext.open("ab") as f:
        f.write(extra)
    with pytest.raises(PayloadExtendedError) as err:
        decrypt_bundle(bundle.ciphertext, world.tmp / "out", key, assignment.record.cipher)
    assert err.value.reason == "payload-extended"
    with pytest.raises(LengthExceededError):
        download(world, bundle.ciphertext, assignment)


# --- metadata attacks ---------------------------------------------------------


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _leaves(value, (*path, index))
    else:
        yield path


def _mutated(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("1" if value.endswith("0") else "0") if value else "x"
    return "x"


def _tamper(data: bytes, path: tuple[Any, ...]) -> bytes:
    obj = json.loads(data)
    node = obj["signed"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _mutated(node[path[-1]])
    return json.dumps(obj).encode()


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "director"])
def test_metadata_tampering_any_signed_field(world: World, bundle: Bundle, role: str) -> None:
    director = world.assign(bundle)
    ts, snap, tgt = world.image.published
    original = {"timestamp": ts, "snapshot": snap, "targets": tgt, "director": director}[role]
    # Pinned roles fail on their parent's hash first; unpinned ones on signature.
    expected: tuple[type[BundleError], ...] = {
        "timestamp": (BadSignatureError, MalformedMetadataError),
        "snapshot": (InconsistentMetadataError,),
        "targets": (InconsistentMetadataError,),
        "director": (BadSignatureError, MalformedMetadataError),
    }[role]
    verify_image_metadata(world.state, ts, snap, tgt, NOW)
    before = world.state.to_json()
    paths = list(_leaves(json.loads(original)["signed"]))
    assert len(paths) > 5
    for path in paths:
        files = {"timestamp": ts, "snapshot": snap, "targets": tgt, "director": director}
        files[role] = _tamper(original, path)
        with pytest.raises(expected):
            resolve(
                world,
                files["director"],
                image=(files["timestamp"], files["snapshot"], files["targets"]),
            )
        assert world.state.to_json() == before, path
    # The untampered set still verifies.
    resolve(world, director)


def test_untrusted_key_signature(world: World, bundle: Bundle) -> None:
    attacker = new_signers()
    forged_director = world.director.assign(
        world.device.device_id, bundle.target, {}, signers=attacker
    )
    with pytest.raises(BadSignatureError) as err:
        resolve(world, forged_director)
    assert err.value.reason == "bad-signature"
    # An attacker's signature filed under a trusted key id fails as well.
    md = Metadata.from_bytes(world.image.published[0])
    trusted_keyid = next(iter(md.signatures))
    forged = attacker[0].sign(md.signed_bytes)
    md.signatures = {trusted_keyid: Signature(trusted_keyid, forged.signature)}
    with pytest.raises(BadSignatureError):
        verify_image_metadata(world.state, md.to_bytes(), *world.image.published[1:], NOW)


def test_revoked_key_signature(world: World, bundle: Bundle) -> None:
    old_targets_keys = world.image.keys[Targets.type]
    update_root(world.state, world.image.rotate(Targets.type, new_signers()))
    world.image.keys[Targets.type] = old_targets_keys
    ts, snap, tgt = world.image.publish()
    with pytest.raises(BadSignatureError, match="targets"):
        verify_image_metadata(world.state, ts, snap, tgt, NOW)


def test_rollback_older_release_refused(world: World) -> None:
    first = world.publish_bundle(release=1)
    second = world.publish_bundle(release=2)
    install(world, second, resolve(world, world.assign(second)))
    with pytest.raises(RollbackError) as err:
        resolve(world, world.assign(first))
    assert err.value.reason == "rollback"
    assert world.state.installed_release("minilm-intent") == 2


def test_rollback_older_metadata_version_refused(world: World, bundle: Bundle) -> None:
    old_image, old_director = world.image.published, world.assign(bundle)
    world.image.publish()
    resolve(world, world.assign(bundle))
    with pytest.raises(RollbackError):
        verify_image_metadata(world.state, *old_image, NOW)
    with pytest.raises(RollbackError):
        verify_director_targets(world.state, old_director, world.device.device_id, NOW)


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_freeze_expired_timestamp(world: World, bundle: Bundle, role: str) -> None:
    past = NOW - timedelta(seconds=1)
    world.image.publish(**{f"{role}_expires": past})
    before = world.state.to_json()
    with pytest.raises(ExpiredMetadataError) as err:
        resolve(world, world.assign(bundle))
    assert err.value.reason == "expired"
    assert world.state.to_json() == before
    # Freeze only stops updates: fresh metadata is accepted again afterwards.
    world.image.publish()
    resolve(world, world.assign(bundle))


def test_freeze_expired_targets(world: World, bundle: Bundle) -> None:
    world.image.publish(targets_expires=NOW - timedelta(seconds=1))
    with pytest.raises(ExpiredMetadataError):
        resolve(world, world.assign(bundle))
    world.image.publish()
    with pytest.raises(ExpiredMetadataError):
        resolve(world, world.assign(bundle, expires=NOW - timedelta(seconds=1)))
    with pytest.raises(ExpiredMetadataError, match="root"):
        verify_image_metadata(world.state, *world.image.published, NOW + timedelta(days=400))


def test_mix_and_match_director_names_unsigned_target(world: World, bundle: Bundle) -> None:
    evil = TargetFile(bundle.target.length, {"sha256": "e" * 64}, "bundles/evil.enc")
    custom = director_target_custom(bundle.record, device_id="dev-alice", wrapped_key=b"k" * 80)
    cases = [
        world.director.assign("dev-alice", evil, custom),
        world.director.assign(
            "dev-alice",
            TargetFile(bundle.target.length, {"sha256": "e" * 64}, bundle.target.path),
            custom,
        ),
        world.director.assign(
            "dev-alice",
            TargetFile(bundle.target.length + 1, bundle.target.hashes, bundle.target.path),
            custom,
        ),
    ]
    bumped = json.loads(json.dumps(custom))
    bumped["tinyfleet"]["record"]["release"] = 99
    cases.append(world.director.assign("dev-alice", bundle.target, bumped))
    for director in cases:
        with pytest.raises(MixAndMatchError) as err:
            resolve(world, director)
        assert err.value.reason == "mix-and-match"


def test_wrong_device_cannot_decrypt(world: World, bundle: Bundle) -> None:
    for_bob = world.assign(bundle, world.other_device)
    with pytest.raises(WrongDeviceError) as err:
        resolve(world, for_bob)
    assert err.value.reason == "wrong-device"
    assignment = resolve(world, for_bob, device=world.other_device)
    for device_id in ("dev-alice", "dev-bob"):
        with pytest.raises(KeyUnwrapError):
            unwrap_key(
                assignment.wrapped_key,
                world.device.private_key,
                bundle_id=bundle.record.bundle_id,
                release=1,
                device_id=device_id,
            )


def test_key_rotation_follows_root_chain_and_old_key_alone_fails(
    world: World, bundle: Bundle
) -> None:
    image = world.image
    v1_root_keys, v1_targets_keys = image.keys[Root.type], image.keys[Targets.type]
    chain = [
        image.rotate(Targets.type, new_signers()),
        image.rotate(Root.type, new_signers(3), threshold=2),
    ]
    assert update_root_chain(world.state, chain).version == 3
    with pytest.raises(BadSignatureError, match="targets"):
        resolve(world, world.assign(bundle))  # still signed by the rotated-out key
    image.publish()
    resolve(world, world.assign(bundle))
    # The rotated-out targets key alone no longer counts.
    new_targets_keys, image.keys[Targets.type] = image.keys[Targets.type], v1_targets_keys
    with pytest.raises(BadSignatureError, match="targets"):
        verify_image_metadata(world.state, *image.publish(), NOW)
    image.keys[Targets.type] = new_targets_keys
    # Root v4 needs a threshold of v3's root keys and of its own.
    v3_root_keys, v4_root_keys = image.keys[Root.type], new_signers(3)
    v4 = make_root({**image.keys, Root.type: v4_root_keys}, {Root.type: 2}, version=4)
    for signers in (v1_root_keys, v4_root_keys, v3_root_keys, v3_root_keys[:1] + v4_root_keys):
        with pytest.raises(BadSignatureError):
            update_root(world.state, sign(v4, signers))
    assert world.state.image_root.signed.version == 3
    with pytest.raises(RollbackError):
        update_root(world.state, chain[0])
    v4.signed.version = 5
    with pytest.raises(BadVersionError):
        update_root(world.state, sign(v4, v3_root_keys + v4_root_keys))
    v4.signed.version = 4
    update_root(world.state, sign(v4, v3_root_keys[1:] + v4_root_keys[:2]))
    assert world.state.image_root.signed.version == 4


def test_endless_data_download_stops_at_signed_length(world: World) -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"\xaa" * 4096

    with pytest.raises(LengthExceededError) as err:
        download_capped(endless(), world.tmp / "dl", 10_000)
    assert err.value.reason == "length-exceeded"
    assert pulled == 3

    class EndlessBody:
        served = 0

        def read(self, n: int) -> bytes:
            self.served += n
            return b"\xbb" * n

    body = EndlessBody()
    with pytest.raises(LengthExceededError):
        download_capped(body, world.tmp / "dl", 10_000)
    assert body.served == 10_001
    assert not (world.tmp / "dl").exists() and leftovers(world.tmp) == []


def test_it_keeps_exactly_what_was_sent_below_the_cap(world: World) -> None:
    # Space for the cap is reserved up front; the file must not keep the tail.
    assert download_capped(iter([b"abc", b"de"]), world.tmp / "dl", 1000) == 5
    assert (world.tmp / "dl").read_bytes() == b"abcde"


def test_online_key_compromise_director_alone_cannot_install(world: World, bundle: Bundle) -> None:
    attacker_key = generate_content_key()
    wrapped = wrap_key(
        attacker_key,
        world.device.private_key.public_key(),
        bundle_id=bundle.record.bundle_id,
        release=1,
        device_id="dev-alice",
    )
    custom = director_target_custom(bundle.record, device_id="dev-alice", wrapped_key=wrapped)
    # A key the director chose opens, but the signed ciphertext does not.
    assignment = resolve(world, world.director.assign("dev-alice", bundle.target, custom))
    assert assignment.wrapped_key == wrapped
    with pytest.raises(PayloadTamperedError):
        decrypt_bundle(bundle.ciphertext, world.tmp / "out", attacker_key, assignment.record.cipher)
    assert world.state.installed_release("minilm-intent") == 0
    # Nor can it name a payload of its own.
    evil = TargetFile(10, {"sha256": "e" * 64}, "bundles/evil.enc")
    with pytest.raises(MixAndMatchError):
        resolve(world, world.director.assign("dev-alice", evil, custom))
    # With the image repository's online keys too, targets cannot be forged.
    image = world.image
    image.keys[Targets.type] = new_signers()
    image.add_target("bundles/evil.enc", 10, "e" * 64, {})
    with pytest.raises(BadSignatureError, match="targets"):
        verify_image_metadata(world.state, *image.publish(), NOW)


def _replayed(
    world: World, bundle: Bundle, *, bundle_id: str, release: int, device: Device
) -> bytes:
    return wrap_key(
        bundle.key,
        device.private_key.public_key(),
        bundle_id=bundle_id,
        release=release,
        device_id=device.device_id,
    )


def test_wrapped_key_replay_other_bundle(world: World) -> None:
    first, second = world.publish_bundle(release=1), world.publish_bundle(release=2)
    old = _replayed(world, first, bundle_id=first.record.bundle_id, release=2, device=world.device)
    custom = director_target_custom(second.record, device_id="dev-alice", wrapped_key=old)
    assignment = resolve(world, world.director.assign("dev-alice", second.target, custom))
    with pytest.raises(KeyUnwrapError) as err:
        unwrap_key(
            assignment.wrapped_key,
            world.device.private_key,
            bundle_id=assignment.bundle_id,
            release=assignment.release,
            device_id="dev-alice",
        )
    assert err.value.reason == "key-unwrap-failed"


def test_wrapped_key_replay_other_release(world: World, bundle: Bundle) -> None:
    old = _replayed(
        world, bundle, bundle_id=bundle.record.bundle_id, release=0, device=world.device
    )
    with pytest.raises(KeyUnwrapError):
        unwrap_key(
            old,
            world.device.private_key,
            bundle_id=bundle.record.bundle_id,
            release=1,
            device_id="dev-alice",
        )


def test_wrapped_key_replay_other_device(world: World, bundle: Bundle) -> None:
    # Same X25519 key re-enrolled under another id: the id binding still bites.
    reenrolled = Device("dev-alice-old", world.device.private_key)
    old = _replayed(world, bundle, bundle_id=bundle.record.bundle_id, release=1, device=reenrolled)
    with pytest.raises(KeyUnwrapError):
        unwrap_key(
            old,
            world.device.private_key,
            bundle_id=bundle.record.bundle_id,
            release=1,
            device_id="dev-alice",
        )


# --- signed record validation -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("extra",), 1),
        (("schema",), 2),
        (("release",), "2"),
        (("runtime",), "tensorflow"),
        (("arch",), []),
        (("pipeline", "tokenizer"), "../../etc/passwd"),
        (("pipeline", "confidence_threshold"), "1.5"),
        (("pipeline", "pooling"), "median"),
        (("provenance",), {"cosine": 0.99}),
        (("provenance",), {"blob": "x" * 40_000}),
        (("cipher", "chunk_size"), 1),
    ],
)
def test_malformed_signed_record_refused(
    bundle: Bundle, path: tuple[str, ...], value: object
) -> None:
    data = bundle.record.to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InvalidRecordError) as err:
        BundleRecord.from_dict(data)
    assert err.value.reason == "invalid-record"
    assert BundleRecord.from_dict(bundle.record.to_dict()) == bundle.record


def test_every_error_has_a_stable_reason() -> None:
    import tinyfleet_agent.bundle as api

    errors = [getattr(api, name) for name in api.__all__ if name.endswith("Error")]
    assert all(issubclass(e, BundleError) for e in errors)
    reasons = [e.reason for e in errors]
    assert len(set(reasons)) == len(reasons)
    assert {
        "payload-tampered",
        "bad-signature",
        "rollback",
        "expired",
        "mix-and-match",
        "wrong-device",
        "length-exceeded",
        "key-unwrap-failed",
    } <= set(reasons)


def test_inconsistent_snapshot_pin_refused(world: World, bundle: Bundle) -> None:
    # Holder of the online timestamp key pins the right bytes under a wrong
    # version, or pins no hash at all: the chain must not verify.
    ts_bytes, snap, tgt = world.image.published
    timestamp: Metadata[Timestamp] = Metadata.from_bytes(ts_bytes)
    timestamp.signed.snapshot_meta.version += 1
    forged = sign(timestamp, world.image.keys["timestamp"])
    with pytest.raises(InconsistentMetadataError) as err:
        verify_image_metadata(world.state, forged, snap, tgt, NOW)
    assert err.value.reason == "inconsistent-metadata"
    timestamp.signed.snapshot_meta.version -= 1
    timestamp.signed.snapshot_meta.hashes = None
    forged = sign(timestamp, world.image.keys["timestamp"])
    with pytest.raises(InconsistentMetadataError):
        verify_image_metadata(world.state, forged, snap, tgt, NOW)
    verify_image_metadata(world.state, ts_bytes, snap, tgt, NOW)


def test_oversized_metadata_refused_before_parsing(world: World, bundle: Bundle) -> None:
    _, snap, tgt = world.image.published
    huge = b"{" + b" " * (17 * 1024) + b"}"
    with pytest.raises(LengthExceededError):
        verify_image_metadata(world.state, huge, snap, tgt, NOW)
    with pytest.raises(LengthExceededError):
        verify_director_targets(world.state, b" " * (65 * 1024), "dev-alice", NOW)
