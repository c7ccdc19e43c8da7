"""What the security page and `tinyfleet_keys status` show: keys, thresholds, metadata
versions and expiries, root and rotation history (reads keys and both repositories)."""

from __future__ import annotations

from typing import Any

from fleet.models import SigningKey, TufMetadata
from fleet.models.keys import TRUSTED_STATUSES, KeyRole, Repo
from fleet.security import image_repo, masterkey
from fleet.security.keystore import ROLES_OF


def _role_report(repo: str, role: str, root: Any) -> dict[str, Any]:
    keys = SigningKey.objects.filter(repo=repo, role=role, status__in=TRUSTED_STATUSES)
    report: dict[str, Any] = {
        "role": role,
        "threshold": root.roles[role].threshold,
        "devices": None,
        "keys": [
            {
                "keyid": k.keyid,
                "status": k.status,
                "online": k.is_online,
                "created_at": k.created_at,
            }
            for k in keys
        ],
    }
    if repo == Repo.DIRECTOR and role == KeyRole.TARGETS:
        per_device = TufMetadata.objects.filter(repo=repo, role=role, device__isnull=False)
        first = per_device.order_by("expires").first()
        report.update(devices=per_device.values("device").distinct().count())
        report.update(version=None, expires=first.expires if first else None)
        return report
    row = image_repo.latest_row(repo, role)
    report.update(version=row.version if row else None, expires=row.expires if row else None)
    return report


def status_report() -> dict[str, Any]:
    """Keys, thresholds, metadata versions and expiries, root and rotation history."""
    image_repo.ensure_repositories()
    repos = []
    for repo in Repo.values:
        chain = image_repo.root_chain(repo)
        root = image_repo.load(chain[-1]).signed
        repos.append(
            {
                "name": repo,
                "roles": [_role_report(repo, role, root) for role in ROLES_OF[repo]],
                "roots": [
                    {
                        "version": row.version,
                        "created_at": row.created_at,
                        "expires": row.expires,
                        "signed_by": sorted(image_repo.load(row).signatures),
                    }
                    for row in reversed(chain)
                ],
            }
        )
    history = SigningKey.objects.exclude(status__in=TRUSTED_STATUSES).order_by("-rotated_at")
    return {
        "master_key": {"source": masterkey.source(), "fingerprint": masterkey.fingerprint()},
        "repos": repos,
        "rotated": list(history.values("repo", "role", "keyid", "status", "rotated_at")),
    }
