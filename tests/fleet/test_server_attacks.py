"""Attacks on what the server serves, checked with the agent's verification code.

Each test plays the attacker against metadata and payloads produced by the real server
code (image repository, director, publish, device routes) and checks that the device
refuses with the right typed error, or that the server refuses the request.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from tinyfleet_agent.bundle import (
    BadSignatureError,
    KeyUnwrapError,
    MixAndMatchError,
    PayloadTamperedError,
    RollbackError,
    TrustedState,
    WrongDeviceError,
    decrypt_bundle,
    director_target_custom,
    generate_content_key,
    resolve_assignment,
    unwrap_key,
    update_root_chain,
    verify_director_targets,
    verify_image_metadata,
    wrap_key,
)
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from fleet.models import Bundle, SigningKey
from fleet.security import director, keystore
from tests.fleet.publish_helpers import (
    TestDevice,
    device_resolves,
    enrolled_state,
    fetch,
    install,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)


@pytest.fixture
def bundle(db: None, tmp_path: Path) -> Bundle:
    return publish_now(make_version(onnx_files(tmp_path)))


def stolen(repo: str, role: str) -> list[Any]:
    """What a thief of the database and the master key holds for an online role."""
    return [keystore.signer(k) for k in keystore.trusted_keys(repo, role)]


def image_files(dev: TestDevice, prefix: str) -> tuple[bytes, bytes, bytes]:
    ts, snap, tgt = (
        fetch(dev, prefix, f"metadata/image/{r}.json") for r in ("timestamp", "snapshot", "targets")
    )
    return ts, snap, tgt


def follow_roots(dev: TestDevice, prefix: str, state: TrustedState, repo: Any) -> int:
    """Fetch N+1.root.json until there is none, like the agent does."""
    while True:
        version = state.root(repo).signed.version + 1
        response = dev.client().get(f"{prefix}/metadata/{repo}/{version}.root.json")
        if response.status_code == 404:
            return version - 1
        update_root_chain(state, [response.content], repository=repo)


def test_wrong_device_cannot_decrypt_and_the_server_refuses_its_payload_request(
    bundle: Bundle, device_prefix: str, tmp_path: Path
) -> None:
    alice, bob = make_device("alice"), make_device("bob")
    director.assign(alice.device, bundle)
    # Bob asks for Alice's bundle: the server refuses (attack 7).
    refused = bob.client().get(f"{device_prefix}/bundles/{bundle.pk}/payload")
    assert refused.status_code == 403 and "not assigned" in refused.json()["error"]
    fetch(bob, device_prefix, "metadata/director/targets.json", status=404)
    # Even with Alice's metadata and the ciphertext, Bob can neither accept nor unwrap.
    state = enrolled_state()
    alices = director.director_targets_bytes(alice.device)
    with pytest.raises(WrongDeviceError):
        verify_director_targets(state, alices, bob.id, timezone.now())
    assignment = device_resolves(alice, device_prefix, enrolled_state(), timezone.now())
    for device_id in (alice.id, bob.id):
        with pytest.raises(KeyUnwrapError):
            unwrap_key(
                assignment.wrapped_key,
                bob.key,
                bundle_id=bundle.pk,
                release=bundle.release,
                device_id=device_id,
            )
    install(alice, device_prefix, assignment, tmp_path)


def test_payload_access_follows_current_and_previous_assignment(
    bundle: Bundle, device_prefix: str, tmp_path: Path
) -> None:
    dev = make_device()
    second = publish_now(make_version(onnx_files(tmp_path)))
    third = publish_now(make_version(onnx_files(tmp_path)))
    director.assign(dev.device, bundle)
    director.assign(dev.device, second)
    url = f"{device_prefix}/bundles/{{}}/payload"
    for allowed in (bundle, second):  # current, and previous (rollback on the device)
        assert dev.client().get(url.format(allowed.pk), HTTP_RANGE="bytes=0-9").status_code == 206
    assert dev.client().get(url.format(third.pk)).status_code == 403
    assert dev.client().get(url.format("b-unknown")).status_code == 404
    dev.device.revoked_at = timezone.now()
    dev.device.save()
    assert dev.client().get(url.format(second.pk)).status_code == 401


def test_online_key_compromise_cannot_install_an_unsigned_payload(
    bundle: Bundle, device_prefix: str, tmp_path: Path
) -> None:
    dev = make_device()
    director.assign(dev.device, bundle)
    state = enrolled_state()
    ts, snap, tgt = image_files(dev, device_prefix)
    record = device_resolves(dev, device_prefix, state, timezone.now()).record
    director_keys = stolen("director", "targets")
    # 1. The director key names a payload the image repository never signed.
    evil = TargetFile(1000, {"sha256": "e" * 64}, "bundles/evil.enc")
    evil.unrecognized_fields["custom"] = director_target_custom(
        record, device_id=dev.id, wrapped_key=b"k" * 80
    )
    forged = Metadata(Targets(version=50, expires=timezone.now() + timedelta(days=1)))
    forged.signed.targets[evil.path] = evil
    with pytest.raises(MixAndMatchError):
        resolve_assignment(
            state,
            timestamp=ts,
            snapshot=snap,
            targets=tgt,
            director_targets=_sign(forged, director_keys),
            device_id=dev.id,
            now=timezone.now(),
        )
    # 2. It names the real target with a content key of its choosing: nothing decrypts.
    attacker_key = generate_content_key()
    real = TargetFile.from_dict(
        json.loads(tgt)["signed"]["targets"][bundle.target_name], bundle.target_name
    )
    real.unrecognized_fields["custom"] = director_target_custom(
        record,
        device_id=dev.id,
        wrapped_key=wrap_key(
            attacker_key,
            dev.key.public_key(),
            bundle_id=bundle.pk,
            release=bundle.release,
            device_id=dev.id,
        ),
    )
    forged.signed.targets = {real.path: real}
    forged.signed.version = 51
    assignment = resolve_assignment(
        state,
        timestamp=ts,
        snapshot=snap,
        targets=tgt,
        director_targets=_sign(forged, director_keys),
        device_id=dev.id,
        now=timezone.now(),
    )
    enc = tmp_path / "payload.enc"
    enc.write_bytes(fetch(dev, device_prefix, f"bundles/{bundle.pk}/payload"))
    with pytest.raises(PayloadTamperedError):
        decrypt_bundle(enc, tmp_path / "out.zip", attacker_key, assignment.record.cipher)
    # 3. Snapshot and timestamp keys cannot stand in for the targets key.
    fake_targets = Metadata.from_bytes(tgt)
    fake_targets.signed.version += 1
    fake_targets.signed.targets[evil.path] = evil
    thief = {role: stolen("image", role) for role in ("snapshot", "timestamp")}
    files = _republish(fake_targets, {**thief, "targets": thief["snapshot"]})
    with pytest.raises(BadSignatureError, match="targets"):
        verify_image_metadata(state, *files, timezone.now())
    # What the thief can do: keep re-signing a timestamp over the current snapshot, so
    # the device keeps trusting what it has and sees no newer bundle (a freeze).
    frozen = Metadata.from_bytes(ts)
    frozen.signed.version += 10
    frozen.signed.expires = timezone.now() + timedelta(days=365)
    image = verify_image_metadata(
        state, _sign(frozen, thief["timestamp"]), snap, tgt, timezone.now()
    )
    assert set(image.targets.targets) == {bundle.target_name}


def _sign(md: Metadata[Any], signers: list[Any]) -> bytes:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes()


def _republish(targets: Metadata[Any], keys: dict[str, list[Any]]) -> tuple[bytes, bytes, bytes]:
    """Sign targets, a snapshot pinning it and a timestamp pinning that with `keys`."""
    tgt = _sign(targets, keys["targets"])
    snap_md = Metadata(Snapshot(version=99, expires=timezone.now() + timedelta(days=1)))
    snap_md.signed.meta["targets.json"] = MetaFile.from_data(
        targets.signed.version, tgt, ["sha256"]
    )
    snap = _sign(snap_md, keys["snapshot"])
    ts_md = Metadata(Timestamp(version=99, expires=timezone.now() + timedelta(days=1)))
    ts_md.signed.snapshot_meta = MetaFile.from_data(99, snap, ["sha256"])
    return _sign(ts_md, keys["timestamp"]), snap, tgt


def test_key_rotation_keeps_an_enrolled_device_working_and_old_keys_alone_fail(
    bundle: Bundle, device_prefix: str, tmp_path: Path
) -> None:
    dev = make_device()
    state = enrolled_state()  # trusts root v1 of both repositories
    director.assign(dev.device, bundle)
    device_resolves(dev, device_prefix, state, timezone.now())
    old = {role: stolen("image", role) for role in ("targets", "snapshot", "timestamp")}
    old_director = stolen("director", "targets")
    for role in ("targets", "snapshot", "timestamp", "root"):
        call_command("tinyfleet_keys", "rotate", role)
    call_command("tinyfleet_keys", "rotate", "targets", "--repo", "director")
    call_command("tinyfleet_keys", "rotate", "root", "--repo", "director")
    assert follow_roots(dev, device_prefix, state, "image") == 5
    assert follow_roots(dev, device_prefix, state, "director") == 3
    second = publish_now(make_version(onnx_files(tmp_path)))
    director.assign(dev.device, second)
    assignment = device_resolves(dev, device_prefix, state, timezone.now())
    install(dev, device_prefix, assignment, tmp_path)
    # The rotated-out keys, even all together, sign nothing the device accepts.
    targets = Metadata.from_bytes(image_files(dev, device_prefix)[2])
    targets.signed.version += 5
    with pytest.raises(BadSignatureError):
        verify_image_metadata(state, *_republish(targets, old), timezone.now())
    forged = Metadata.from_bytes(director.director_targets_bytes(dev.device))
    forged.signed.version += 5
    with pytest.raises(BadSignatureError):
        verify_director_targets(state, _sign(forged, old_director), dev.id, timezone.now())


def test_revoked_key_signature(bundle: Bundle, device_prefix: str) -> None:
    dev = make_device()
    state = enrolled_state()
    (revoked,) = keystore.trusted_keys("image", "timestamp")
    thief = stolen("image", "timestamp")
    call_command("tinyfleet_keys", "revoke", revoked.keyid)
    assert SigningKey.objects.get(keyid=revoked.keyid).private_key_sealed is None
    follow_roots(dev, device_prefix, state, "image")
    ts, snap, tgt = image_files(dev, device_prefix)
    verify_image_metadata(state, ts, snap, tgt, timezone.now())
    replay = Metadata.from_bytes(ts)
    replay.signed.version += 1
    with pytest.raises(BadSignatureError, match="timestamp"):
        verify_image_metadata(state, _sign(replay, thief), snap, tgt, timezone.now())


def test_rollback_to_an_older_release_refused(
    bundle: Bundle, device_prefix: str, tmp_path: Path
) -> None:
    dev = make_device()
    state = enrolled_state()
    newer = publish_now(make_version(onnx_files(tmp_path)))
    director.assign(dev.device, newer)
    assignment = device_resolves(dev, device_prefix, state, timezone.now())
    state.record_installed(assignment.record.model, assignment.release)
    director.assign(dev.device, bundle)  # an operator (or thief) points back to release 1
    with pytest.raises(RollbackError):
        device_resolves(dev, device_prefix, state, timezone.now())


def test_metadata_tampering_in_transit(bundle: Bundle, device_prefix: str) -> None:
    dev = make_device()
    state = enrolled_state()
    ts, snap, tgt = image_files(dev, device_prefix)
    obj = json.loads(ts)
    obj["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a freeze attempt by a mirror
    with pytest.raises(BadSignatureError, match="timestamp"):
        verify_image_metadata(state, json.dumps(obj).encode(), snap, tgt, timezone.now())
    verify_image_metadata(state, ts, snap, tgt, timezone.now())
