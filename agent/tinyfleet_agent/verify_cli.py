"""`tinyfleet-agent verify`: check an exported bundle offline.

    tinyfleet-agent verify EXPORT --trusted-root FILE [--device-key FILE]
                           [--device-id ID] [--output FILE] [--at ISO-TIME] [--json]

EXPORT is the tar from `GET /api/v1/bundles/{id}/export` (or that tar unpacked). The
check trusts nothing in it: starting from the root in `--trusted-root` (a root JSON, an
enrollment response or the agent's trusted state), it walks the exported root chain,
verifies timestamp, snapshot and targets (signatures, thresholds, versions, expiry,
pins), takes the bundle's signed target and record, and streams the ciphertext with the
signed length as a hard cap and the signed SHA-256. With `--device-key` (the device's
X25519 private key) and a director targets file in the export, it also verifies the
director metadata, cross-checks it with the image target, unwraps the content key,
decrypts chunk by chunk and unpacks the payload with the golden-set digest check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ._internal.payload import extract_payload
from ._internal.record import record_of_target
from .bundle import (
    DEFAULT_LIMITS,
    BundleError,
    MalformedMetadataError,
    TrustedState,
    canonical_json,
    decrypt_bundle,
    download_capped,
    match_assignment,
    unwrap_key,
    update_root_chain,
    verify_director_targets,
    verify_image_metadata,
)

UTC = timezone.utc  # datetime.UTC needs Python 3.11; devices may run 3.10

__all__ = ["VerifyReport", "main", "verify_export"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_MANIFEST = "tinyfleet-export.json"
_META = re.compile(
    r"metadata/(image|director)/(?:([1-9]\d{0,9})\.)?(root|timestamp|snapshot|targets)\.json"
)
_CIPHERTEXT = re.compile(r"bundles/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.enc")
_MAX_TRUST_FILE = 4 << 20


@dataclass
class VerifyReport:
    """What an offline check established."""

    bundle: str = ""
    target: str = ""
    release: int = 0
    model: str = ""
    image_root_version: int = 0
    targets_version: int = 0
    ciphertext_sha256: str = ""
    decrypted: bool = False
    director_root_version: int | None = None
    plaintext_sha256: str = ""
    payload_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Export:
    """Read access to an export tar or directory; only expected names, size-capped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar = tarfile.open(path) if path.is_file() else None  # noqa: SIM115

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def names(self) -> list[str]:
        if self._tar is None:
            return [
                p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()
            ]
        return [m.name for m in self._tar.getmembers() if m.isfile()]

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self._tar is None:
            with (self.path / name).open("rb") as f:
                yield f
            return
        member = self._tar.getmember(name)
        if not member.isfile():
            raise MalformedMetadataError(f"{name} in the export is not a regular file")
        stream = self._tar.extractfile(member)
        assert stream is not None
        with stream:
            yield stream

    def read(self, name: str, cap: int) -> bytes:
        with self.open(name) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise MalformedMetadataError(f"{name} is larger than {cap} bytes")
        return data


def _load_trust(path: Path) -> tuple[bytes, bytes | None]:
    """(image root, director root or None) from a root, enrollment or state JSON."""
    raw = path.read_bytes()
    if len(raw) > _MAX_TRUST_FILE:
        raise MalformedMetadataError(f"{path} is too large for a trusted root")
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise MalformedMetadataError(f"{path} is not a JSON object")
    if isinstance(obj.get("signed"), dict):
        return canonical_json(obj), None
    for image_key, director_key in (("image_root", "director_root"), ("image", "director")):
        if isinstance(obj.get(image_key), dict):
            director = obj.get(director_key)
            return canonical_json(obj[image_key]), (
                canonical_json(director) if isinstance(director, dict) else None
            )
    raise MalformedMetadataError(f"{path} holds no image root")


def _load_device_key(path: Path) -> X25519PrivateKey:
    raw = path.read_bytes()
    if len(raw) == 32:
        return X25519PrivateKey.from_private_bytes(raw)
    text = raw.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64}", text):
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode()))
    key = load_pem_private_key(raw, None)
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(f"{path} is not an X25519 private key")
    return key


def _roots(export: _Export, repo: str, above: int) -> list[bytes]:
    versions = sorted(
        int(m.group(2))
        for name in export.names()
        if (m := _META.fullmatch(name)) and m.group(1) == repo and m.group(3) == "root"
    )
    cap = DEFAULT_LIMITS.max_root_bytes
    chain = [v for v in versions if v > above]
    return [export.read(f"metadata/{repo}/{v}.root.json", cap) for v in chain]


def _manifest(export: _Export) -> dict[str, Any]:
    if _MANIFEST not in export.names():
        return {}
    data = json.loads(export.read(_MANIFEST, 64 * 1024))
    return data if isinstance(data, dict) else {}


def _ciphertext_name(export: _Export, manifest: dict[str, Any]) -> str:
    names = [n for n in export.names() if _CIPHERTEXT.fullmatch(n)]
    wanted = manifest.get("target")
    if isinstance(wanted, str) and wanted in names:
        return wanted
    if len(names) != 1:
        raise MalformedMetadataError("the export must hold exactly one bundles/*.enc file")
    return names[0]


def verify_export(
    path: Path,
    trusted_root: Path,
    *,
    device_key: Path | None = None,
    device_id: str | None = None,
    output: Path | None = None,
    now: datetime | None = None,
) -> VerifyReport:
    """Verify an export offline; see the module docstring.

    Raises:
        BundleError: any verification failure (its `reason` says which).
        ValueError, OSError, tarfile.TarError: unreadable inputs.
    """
    now = now or datetime.now(UTC)
    image_root, director_root = _load_trust(trusted_root)
    state = TrustedState.bootstrap(image_root, director_root or image_root)
    export = _Export(path)
    try:
        report = VerifyReport()
        manifest = _manifest(export)
        root = update_root_chain(state, _roots(export, "image", state.image_root.signed.version))
        report.image_root_version = root.version
        limits = DEFAULT_LIMITS
        image = verify_image_metadata(
            state,
            export.read("metadata/image/timestamp.json", limits.max_timestamp_bytes),
            export.read("metadata/image/snapshot.json", limits.max_snapshot_bytes),
            export.read("metadata/image/targets.json", limits.max_targets_bytes),
            now,
        )
        report.targets_version = image.targets.version
        name = _ciphertext_name(export, manifest)
        target = image.targets.targets.get(name)
        if target is None:
            raise MalformedMetadataError(f"the image repository does not sign {name!r}")
        record = record_of_target(target.custom, target.length, target.hashes)
        report.bundle, report.target, report.release = record.bundle_id, name, record.release
        report.model, report.ciphertext_sha256 = record.model, target.hashes["sha256"]
        with tempfile.TemporaryDirectory(prefix="tinyfleet-verify-") as tmp:
            work = Path(tmp)
            with export.open(name) as body:
                download_capped(
                    body,
                    work / "payload.enc",
                    target.length,
                    expected_sha256=target.hashes["sha256"],
                )
            if device_key is None:
                report.notes.append("not decrypted: pass --device-key to check the payload")
                return report
            if director_root is None:
                raise MalformedMetadataError("--trusted-root holds no director root to decrypt")
            _decrypt(export, state, image, manifest, work, device_key, device_id, now, report)
            if output is not None:
                (work / "payload.zip").replace(output)
        return report
    finally:
        export.close()


def _decrypt(
    export: _Export,
    state: TrustedState,
    image: Any,
    manifest: dict[str, Any],
    work: Path,
    device_key: Path,
    device_id: str | None,
    now: datetime,
    report: VerifyReport,
) -> None:
    name = "metadata/director/targets.json"
    if name not in export.names():
        raise MalformedMetadataError("the export holds no director targets (export ?device=ID)")
    root = update_root_chain(
        state,
        _roots(export, "director", state.director_root.signed.version),
        repository="director",
    )
    report.director_root_version = root.version
    device_id = device_id or str(manifest.get("device") or "")
    data = export.read(name, DEFAULT_LIMITS.max_director_targets_bytes)
    director = verify_director_targets(state, data, device_id, now)
    assignment = match_assignment(state, image, director)
    key = unwrap_key(
        assignment.wrapped_key,
        _load_device_key(device_key),
        bundle_id=assignment.bundle_id,
        release=assignment.release,
        device_id=device_id,
    )
    payload = work / "payload.zip"
    cipher = assignment.record.cipher
    decrypt_bundle(work / "payload.enc", payload, key, cipher, check_ciphertext_hash=False)
    unpacked = work / "unpacked"
    unpacked.mkdir()
    extracted = extract_payload(
        payload, unpacked, golden_sha256=assignment.record.golden_set_sha256
    )
    report.decrypted, report.plaintext_sha256 = True, cipher.plaintext_sha256
    report.payload_files = list(extracted.files)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `verify` subcommand's arguments (shared with `tinyfleet-agent verify`)."""
    p.add_argument("path", type=Path, help="export tar (or its unpacked folder)")
    p.add_argument(
        "--trusted-root",
        type=Path,
        required=True,
        help="root JSON, enrollment response or trusted state JSON",
    )
    p.add_argument("--device-key", type=Path, help="X25519 private key (raw, hex or PEM)")
    p.add_argument("--device-id", help="default: the device named in the export")
    p.add_argument("--output", type=Path, help="write the decrypted payload ZIP here")
    p.add_argument("--at", help="check expiry at this ISO time instead of now")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Run a parsed `verify` command; returns the exit code."""
    try:
        now = datetime.fromisoformat(args.at) if args.at else None
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        report = verify_export(
            args.path,
            args.trusted_root,
            device_key=args.device_key,
            device_id=args.device_id,
            output=args.output,
            now=now,
        )
    except BundleError as e:
        print(f"verification FAILED ({e.reason}): {e}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError, tarfile.TarError, KeyError) as e:
        print(f"cannot verify {args.path}: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        out(json.dumps(report.__dict__, indent=2, sort_keys=True))
        return EXIT_OK
    out(f"OK  {report.bundle}: {report.model} release {report.release} ({report.target})")
    out(f"    image root v{report.image_root_version}, targets v{report.targets_version}")
    out(f"    ciphertext sha256 {report.ciphertext_sha256} (signed length and digest match)")
    if report.decrypted:
        out(
            f"    director root v{report.director_root_version}; decrypted, payload sha256 "
            f"{report.plaintext_sha256}: {', '.join(report.payload_files)}"
        )
    for note in report.notes:
        out(f"    {note}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: `python -m tinyfleet_agent.verify_cli ...`."""
    parser = argparse.ArgumentParser(prog="tinyfleet-agent verify", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
