"""The TUF repositories the server signs, on python-tuf's Metadata API.

Both repositories (image, director) have their own root; this module creates them,
writes new root versions (refresh; rotation and revocation live in `rotation`) and
maintains the image repository's targets, snapshot and timestamp. Every change runs
inside a transaction that first locks the repository's row, so versions are gap-free and
the snapshot and timestamp always pin bytes that were really stored. Stored bytes are
served verbatim.

Root keys may be offline: writing a root then needs their signers from a file
(`keystore.load_root_key_file`), passed as `extra_signers`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from fleet.models import TufMetadata, TufRepository
from fleet.models.keys import KeyRole, Repo
from fleet.security import keystore
from fleet.security.keystore import KeyUnavailableError

log = logging.getLogger(__name__)

# Compact JSON: the device caps metadata sizes, and targets lists every bundle.
SERIALIZER = JSONSerializer(compact=True)
IMAGE_CHAIN: tuple[str, ...] = (KeyRole.TARGETS, KeyRole.SNAPSHOT, KeyRole.TIMESTAMP)
# Old versions kept for devices that fetch by version (consistent snapshots); every
# root version is kept forever because devices walk the chain one by one.
KEEP_VERSIONS: dict[str, int] = {KeyRole.TARGETS: 32, KeyRole.SNAPSHOT: 32, KeyRole.TIMESTAMP: 4}
_CLASSES: dict[str, Any] = {
    KeyRole.TARGETS: Targets,
    KeyRole.SNAPSHOT: Snapshot,
    KeyRole.TIMESTAMP: Timestamp,
}


def lifetime(repo: str, role: str) -> timedelta:
    """How long a freshly signed `role` of `repo` stays valid (settings)."""
    name = "director-targets" if repo == Repo.DIRECTOR and role == KeyRole.TARGETS else role
    return timedelta(seconds=settings.METADATA_EXPIRY[name])


def expiry(repo: str, role: str, now: datetime) -> datetime:
    # TUF serialises expiry to whole seconds; store exactly what is signed.
    return (now + lifetime(repo, role)).replace(microsecond=0)


def lock(repo: str) -> None:
    """Serialise metadata writers of `repo` (call inside transaction.atomic)."""
    TufRepository.objects.get_or_create(name=repo)
    TufRepository.objects.select_for_update().get(name=repo)


def latest_row(repo: str, role: str, device: Any = None) -> TufMetadata | None:
    rows = TufMetadata.objects.filter(repo=repo, role=role, device=device)
    return rows.order_by("-version").first()


def row_by_version(repo: str, role: str, version: int, device: Any = None) -> TufMetadata | None:
    return TufMetadata.objects.filter(repo=repo, role=role, device=device, version=version).first()


def load(row: TufMetadata) -> Metadata[Any]:
    """A fresh, mutable Metadata object of a stored row."""
    return Metadata.from_bytes(bytes(row.data))


def sign_and_store(
    repo: str,
    role: str,
    md: Metadata[Any],
    signers: Iterable[CryptoSigner],
    *,
    device: Any = None,
    assignment: Any = None,
) -> TufMetadata:
    """Sign `md` with every signer and store the exact bytes that will be served."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    row = TufMetadata.objects.create(
        repo=repo,
        role=role,
        version=md.signed.version,
        device=device,
        assignment=assignment,
        data=md.to_bytes(SERIALIZER),
        expires=md.signed.expires,
    )
    keep = KEEP_VERSIONS.get(role) if device is None else 4
    if keep and role != KeyRole.ROOT:
        _prune(repo, role, device, md.signed.version - keep)
    return row


def _prune(repo: str, role: str, device: Any, below: int) -> None:
    if below > 0:
        TufMetadata.objects.filter(repo=repo, role=role, device=device, version__lte=below).delete()


# --- roots ----------------------------------------------------------------------------


def current_root_row(repo: str) -> TufMetadata:
    row = latest_row(repo, KeyRole.ROOT)
    if row is None:
        ensure_repositories()
        row = latest_row(repo, KeyRole.ROOT)
    assert row is not None
    return row


def current_root(repo: str) -> Metadata[Root]:
    return load(current_root_row(repo))


def root_chain(repo: str) -> list[TufMetadata]:
    """Every root version of `repo`, oldest first."""
    return list(TufMetadata.objects.filter(repo=repo, role=KeyRole.ROOT).order_by("version"))


def write_root(
    repo: str, new_root: Root, extra_signers: dict[str, CryptoSigner] | None = None
) -> TufMetadata:
    """Sign and store root `new_root.version` of `repo` (call with the repo locked).

    It is signed by every available key of the previous root and of the new one, and
    checked against both thresholds, exactly as a device checks it (`update_root`).

    Raises:
        KeyUnavailableError: not enough root keys are online or in `extra_signers`.
    """
    previous = latest_row(repo, KeyRole.ROOT)
    old: Root | None = load(previous).signed if previous else None
    keyids = set(new_root.roles[KeyRole.ROOT].keyids)
    if old is not None:
        keyids |= set(old.roles[KeyRole.ROOT].keyids)
    signers = keystore.signers_for(keyids, extra_signers or {})
    md = Metadata(new_root)
    for signer in signers.values():
        md.sign(signer, append=True)
    try:
        new_root.verify_delegate(KeyRole.ROOT, md.signed_bytes, md.signatures)
        if old is not None:
            old.verify_delegate(KeyRole.ROOT, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise KeyUnavailableError(
            f"cannot sign {repo} root v{new_root.version}: {exc}. The root keys are "
            "offline; pass them with --root-key FILE"
        ) from None
    return sign_and_store(repo, KeyRole.ROOT, md, signers.values())


def _initial_root(repo: str, now: datetime) -> Root:
    root = Root(version=1, expires=expiry(repo, KeyRole.ROOT, now), consistent_snapshot=True)
    for role in keystore.ROLES_OF[repo]:
        keys = keystore.trusted_keys(repo, role)
        if not keys:
            count = settings.ROOT_KEYS if role == KeyRole.ROOT else 1
            keys = [keystore.generate(repo, role) for _ in range(count)]
        for key in keys:
            root.add_key(keystore.public_key(key), role)
        root.roles[role].threshold = settings.ROOT_THRESHOLD if role == KeyRole.ROOT else 1
    return root


def ensure_repositories() -> bool:
    """Create both repositories (keys, root v1, empty image metadata) if missing.

    Returns True when something was created. Safe to call from many processes.
    """
    if TufMetadata.objects.filter(role=KeyRole.ROOT, version=1).count() == len(Repo.values):
        return False
    now = timezone.now()
    created = False
    with transaction.atomic():
        for repo in Repo.values:
            lock(repo)
            if latest_row(repo, KeyRole.ROOT) is not None:
                continue
            write_root(repo, _initial_root(repo, now))
            if repo == Repo.IMAGE:
                resign_image(set(IMAGE_CHAIN), now)
            created = True
    if created:
        log.info("created the image repository and director roots")
    return created


# --- image targets, snapshot, timestamp -------------------------------------------------


def _next_version(role: str, now: datetime) -> Metadata[Any]:
    row = latest_row(Repo.IMAGE, role)
    if row is None:
        md = Metadata(_CLASSES[role](version=1))
    else:
        md = load(row)
        md.signed.version += 1
    md.signed.expires = expiry(Repo.IMAGE, role, now)
    return md


def _meta_of(row: TufMetadata) -> MetaFile:
    data = bytes(row.data)
    return MetaFile(row.version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def resign_image(
    roles: set[str], now: datetime, mutate_targets: Callable[[Targets], None] | None = None
) -> None:
    """Re-sign `roles` and everything that pins them (targets -> snapshot -> timestamp).

    Call with the image repository locked.

    Raises:
        KeyUnavailableError: a role's key is not online.
    """
    roles = set(roles) | ({KeyRole.TARGETS} if mutate_targets else set())
    targets_row = latest_row(Repo.IMAGE, KeyRole.TARGETS)
    if KeyRole.TARGETS in roles or targets_row is None:
        md = _next_version(KeyRole.TARGETS, now)
        if mutate_targets is not None:
            mutate_targets(md.signed)
        signers = keystore.online_signers(Repo.IMAGE, KeyRole.TARGETS)
        targets_row = sign_and_store(Repo.IMAGE, KeyRole.TARGETS, md, signers)
        roles.add(KeyRole.SNAPSHOT)
    snapshot_row = latest_row(Repo.IMAGE, KeyRole.SNAPSHOT)
    if KeyRole.SNAPSHOT in roles or snapshot_row is None:
        md = _next_version(KeyRole.SNAPSHOT, now)
        md.signed.meta["targets.json"] = _meta_of(targets_row)
        signers = keystore.online_signers(Repo.IMAGE, KeyRole.SNAPSHOT)
        snapshot_row = sign_and_store(Repo.IMAGE, KeyRole.SNAPSHOT, md, signers)
        roles.add(KeyRole.TIMESTAMP)
    if KeyRole.TIMESTAMP in roles or latest_row(Repo.IMAGE, KeyRole.TIMESTAMP) is None:
        md = _next_version(KeyRole.TIMESTAMP, now)
        # The device requires the snapshot's length and sha256 here (no unpinned parse).
        md.signed.snapshot_meta = _meta_of(snapshot_row)
        signers = keystore.online_signers(Repo.IMAGE, KeyRole.TIMESTAMP)
        sign_and_store(Repo.IMAGE, KeyRole.TIMESTAMP, md, signers)


def publish_target(path: str, target: Any, now: datetime | None = None) -> TufMetadata:
    """Add (or replace) image target `path` and publish new targets/snapshot/timestamp.

    Returns the new targets row. Call inside a transaction.
    """
    ensure_repositories()
    lock(Repo.IMAGE)

    def add(targets: Targets) -> None:
        targets.targets[path] = target

    resign_image(set(), now or timezone.now(), mutate_targets=add)
    row = latest_row(Repo.IMAGE, KeyRole.TARGETS)
    assert row is not None
    return row


def is_due(row: TufMetadata | None, repo: str, role: str, now: datetime) -> bool:
    # Half of the lifetime left: enough slack for a missed beat or a short outage.
    return row is None or row.expires - now < lifetime(repo, role) / 2


def refresh_image(now: datetime | None = None) -> list[str]:
    """Re-sign image metadata that is getting old; returns the roles re-signed."""
    now = now or timezone.now()
    with transaction.atomic():
        lock(Repo.IMAGE)
        due: set[str] = {
            role
            for role in (KeyRole.TARGETS, KeyRole.SNAPSHOT)
            if is_due(latest_row(Repo.IMAGE, role), Repo.IMAGE, role, now)
        }
        ts = latest_row(Repo.IMAGE, KeyRole.TIMESTAMP)
        stale = ts is None or now - ts.created_at >= timedelta(seconds=settings.TIMESTAMP_REFRESH)
        if stale or is_due(ts, Repo.IMAGE, KeyRole.TIMESTAMP, now):
            due.add(KeyRole.TIMESTAMP)
        if due:
            resign_image(due, now)
    return sorted(due)


def refresh_root(repo: str, now: datetime | None = None) -> bool:
    """Re-sign the root with the same keys when half its lifetime is gone.

    Returns True when a new version was written; False when not due, or when the root
    keys are offline (logged: the operator must run `tinyfleet_keys` with --root-key).
    """
    now = now or timezone.now()
    with transaction.atomic():
        lock(repo)
        row = current_root_row(repo)
        if not is_due(row, repo, KeyRole.ROOT, now):
            return False
        root = load(row).signed
        root.version += 1
        root.expires = expiry(repo, KeyRole.ROOT, now)
        try:
            write_root(repo, root)
        except KeyUnavailableError as exc:
            log.warning("%s root expires %s and cannot be renewed: %s", repo, row.expires, exc)
            return False
    return True
