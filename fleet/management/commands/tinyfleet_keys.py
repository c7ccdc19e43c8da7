"""Key management for the image repository and the director.

    manage.py tinyfleet_keys init
    manage.py tinyfleet_keys status
    manage.py tinyfleet_keys rotate ROLE [--repo image|director] [--root-key FILE]
    manage.py tinyfleet_keys export-root FILE [--repo image|director]
    manage.py tinyfleet_keys revoke KEYID [--root-key FILE]

Every change of keys is a new root version signed by a threshold of the old and of the
new root keys, so enrolled devices follow the chain. Once the root keys are exported
(kept offline), root changes need `--root-key FILE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import audit
from fleet.models import SigningKey
from fleet.models.keys import KeyRole, Repo
from fleet.security import image_repo, keystore, rotation
from fleet.security.keystore import KeyUnavailableError
from fleet.security.masterkey import MasterKeyError
from fleet.security.report import status_report


class Command(BaseCommand):
    help = "Create, inspect, rotate, export (offline root) and revoke signing keys."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("init", help="create both repositories and their keys (idempotent)")
        sub.add_parser("status", help="keys, thresholds, metadata expiry, root history")
        rotate = sub.add_parser("rotate", help="give ROLE new keys through a new root version")
        rotate.add_argument("role", choices=KeyRole.values)
        rotate.add_argument("--repo", choices=Repo.values, default=Repo.IMAGE)
        rotate.add_argument("--root-key", action="append", default=[], type=Path)
        export = sub.add_parser("export-root", help="move root private keys to FILE (0600)")
        export.add_argument("file", type=Path)
        export.add_argument("--repo", choices=Repo.values, action="append")
        revoke = sub.add_parser("revoke", help="remove a key from its root, with a replacement")
        revoke.add_argument("keyid")
        revoke.add_argument("--root-key", action="append", default=[], type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            getattr(self, "_" + action.replace("-", "_"))(options)
        except (KeyUnavailableError, MasterKeyError, ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None

    def _root_signers(self, options: dict[str, Any]) -> dict[str, Any]:
        signers: dict[str, Any] = {}
        for path in options.get("root_key") or []:
            signers.update(keystore.load_root_key_file(path))
        return signers

    def _init(self, options: dict[str, Any]) -> None:
        created = image_repo.ensure_repositories()
        self.stdout.write("created both repositories" if created else "already initialised")
        if created:
            audit(None, "keys.init", None, via="cli")

    def _status(self, options: dict[str, Any]) -> None:
        report = status_report()
        master = report["master_key"]
        self.stdout.write(f"master key: {master['source']} (fingerprint {master['fingerprint']})")
        for repo in report["repos"]:
            latest = repo["roots"][0]
            self.stdout.write(
                f"\n{repo['name']}: root v{latest['version']}, expires {latest['expires']:%F %T}"
            )
            for role in repo["roles"]:
                expires = f"{role['expires']:%F %T}" if role["expires"] else "-"
                self.stdout.write(
                    f"  {role['role']:<10} threshold {role['threshold']}/{len(role['keys'])}"
                    f"  v{role['version'] or '-'}  expires {expires}"
                )
                for key in role["keys"]:
                    where = "online" if key["online"] else "OFFLINE"
                    self.stdout.write(f"    {key['keyid']}  {key['status']}  {where}")
        for key in report["rotated"]:
            self.stdout.write(
                f"{key['rotated_at']:%F %T} {key['status']}: {key['repo']}/{key['role']} "
                f"{key['keyid']}"
            )

    def _rotate(self, options: dict[str, Any]) -> None:
        repo, role = options["repo"], options["role"]
        row = rotation.rotate(repo, role, extra_signers=self._root_signers(options))
        audit(None, "keys.rotate", None, repo=repo, role=role, root_version=row.version)
        self.stdout.write(f"rotated {repo} {role}: {repo} root is now v{row.version}")

    def _export_root(self, options: dict[str, Any]) -> None:
        image_repo.ensure_repositories()
        repos = options["repo"] or Repo.values
        keyids = keystore.export_root_keys(options["file"], repos)
        audit(None, "keys.export-root", None, repos=list(repos), keyids=keyids)
        self.stdout.write(
            f"wrote {len(keyids)} root key(s) to {options['file']} (mode 0600) and deleted them "
            "from the database. Store the file offline; root changes now need --root-key FILE."
        )

    def _revoke(self, options: dict[str, Any]) -> None:
        keyid = options["keyid"]
        try:
            key = SigningKey.objects.get(keyid=keyid)
        except SigningKey.DoesNotExist:
            raise CommandError(f"no key {keyid!r}") from None
        row = rotation.revoke(keyid, extra_signers=self._root_signers(options))
        audit(None, "keys.revoke", None, repo=key.repo, role=key.role, keyid=keyid)
        self.stdout.write(
            f"revoked {key.repo} {key.role} key {keyid[:16]}; {key.repo} root is now "
            f"v{row.version} with a fresh replacement key"
        )
