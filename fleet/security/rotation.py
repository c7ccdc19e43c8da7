"""Key rotation and revocation: a new root version, then everything the role signed
is re-signed with the new keys (image repository roles, or every device's director
targets). Above both repositories and the director in the chain
keys -> repositories -> director -> rotation / publishing.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from securesystemslib.signer import CryptoSigner

from fleet.models import KeyStatus, SigningKey, TufMetadata
from fleet.models.keys import KeyRole, Repo
from fleet.security import image_repo, keystore
from fleet.security.director import resign_all


def rotate(
    repo: str,
    role: str,
    *,
    replace: list[str] | None = None,
    status: str = KeyStatus.RETIRED,
    extra_signers: dict[str, CryptoSigner] | None = None,
) -> TufMetadata:
    """Give `role` new keys through root version N+1, signed by old and new root keys.

    `replace` names the keyids to remove (default: all of the role's keys); each
    removed key gets a fresh replacement. Removed keys become `status` and lose their
    private halves; metadata of the role is re-signed with the new keys at once.

    Raises:
        ValueError: unknown role for the repository or keyid not trusted for the role.
        KeyUnavailableError: root keys are offline and not in `extra_signers`.
    """
    if role not in keystore.ROLES_OF[repo]:
        raise ValueError(f"{repo} has no {role} role")
    image_repo.ensure_repositories()
    now = timezone.now()
    with transaction.atomic():
        image_repo.lock(repo)
        old_keys = [
            k for k in keystore.trusted_keys(repo, role) if replace is None or k.keyid in replace
        ]
        if replace is not None and len(old_keys) != len(set(replace)):
            raise ValueError(f"not every key in {replace} is a trusted {repo} {role} key")
        count = settings.ROOT_KEYS if role == KeyRole.ROOT and replace is None else len(old_keys)
        new_keys = [keystore.generate(repo, role) for _ in range(max(count, 1))]
        root = image_repo.current_root(repo).signed
        for key in old_keys:
            root.revoke_key(key.keyid, role)
        for key in new_keys:
            root.add_key(keystore.public_key(key), role)
        if role == KeyRole.ROOT:
            keys = len(root.roles[KeyRole.ROOT].keyids)
            root.roles[KeyRole.ROOT].threshold = min(settings.ROOT_THRESHOLD, keys)
        root.version += 1
        root.expires = image_repo.expiry(repo, KeyRole.ROOT, now)
        row = image_repo.write_root(repo, root, extra_signers)
        keystore.retire(old_keys, status)
        _resign_after_rotation(repo, role, now)
    return row


def _resign_after_rotation(repo: str, role: str, now: datetime) -> None:
    if repo == Repo.IMAGE and role != KeyRole.ROOT:
        image_repo.resign_image({role}, now)
    elif repo == Repo.DIRECTOR and role == KeyRole.TARGETS:
        resign_all(now)


def revoke(keyid: str, extra_signers: dict[str, CryptoSigner] | None = None) -> TufMetadata:
    """Remove a possibly compromised key from its root (with a fresh replacement).

    Raises:
        SigningKey.DoesNotExist: unknown keyid.
        ValueError: the key is not trusted any more.
        KeyUnavailableError: as `rotate`.
    """
    key = SigningKey.objects.get(keyid=keyid)
    if not key.is_trusted:
        raise ValueError(f"key {keyid[:12]} is already {key.status}")
    return rotate(
        key.repo,
        key.role,
        replace=[keyid],
        status=KeyStatus.REVOKED,
        extra_signers=extra_signers,
    )
