"""Master key, keys at rest, offline root keys and the tinyfleet_keys command."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from tinyfleet_agent.bundle import update_root_chain, verify_image_metadata

from accounts.models import AuditEvent
from fleet.models import Bundle, KeyStatus, SigningKey
from fleet.security import image_repo, keystore, masterkey
from fleet.security.director import CONTENT_KEY_PURPOSE, content_key
from fleet.security.masterkey import MasterKeyError
from tests.fleet.publish_helpers import (
    enrolled_state,
    image_set,
    make_version,
    onnx_files,
    publish_now,
)


def test_it_generates_the_embedded_master_key_once_with_mode_0600(
    settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    settings.MASTER_KEY, settings.MASTER_KEY_PATH = "", tmp_path / "master.key"
    monkeypatch.setattr(masterkey, "_warned", False)
    first = masterkey.master_key()
    assert masterkey.master_key() == first and len(first) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "master.key").st_mode) == 0o600
    assert caplog.text.count("production must provide TINYFLEET_MASTER_KEY") == 1
    assert "generated" in masterkey.source()


def test_it_takes_the_master_key_from_the_environment(settings: Any) -> None:
    settings.MASTER_KEY = "ab" * 32
    settings.MASTER_KEY_SOURCE = "TINYFLEET_MASTER_KEY"
    assert masterkey.master_key() == bytes.fromhex("ab" * 32)
    assert masterkey.source() == "TINYFLEET_MASTER_KEY"
    for bad in ("too-short", "ab" * 8, "!" * 64):
        settings.MASTER_KEY = bad
        with pytest.raises(ImproperlyConfigured, match="at least 32 random bytes"):
            masterkey.master_key()


def test_sealed_values_are_bound_to_their_row_and_master_key(settings: Any) -> None:
    settings.MASTER_KEY = "11" * 32
    sealed = masterkey.seal(b"secret", purpose="signing-key", bound_to="k1")
    assert masterkey.unseal(sealed, purpose="signing-key", bound_to="k1") == b"secret"
    for purpose, bound in (("signing-key", "k2"), ("bundle-content-key", "k1")):
        with pytest.raises(MasterKeyError):
            masterkey.unseal(sealed, purpose=purpose, bound_to=bound)
    settings.MASTER_KEY = "22" * 32
    with pytest.raises(MasterKeyError, match="was TINYFLEET_MASTER_KEY changed"):
        masterkey.unseal(sealed, purpose="signing-key", bound_to="k1")


def _database_dump() -> bytes:
    """Every value in every fleet and compression table, as bytes."""
    blob = bytearray()
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            if not table.startswith(("fleet_", "compression_")):
                continue
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                for value in row:
                    blob += bytes(value) if isinstance(value, bytes | memoryview) else b""
                    blob += str(value).encode()
    return bytes(blob)


def raw_private(key: SigningKey) -> bytes:
    sealed = key.private_key_sealed
    assert sealed is not None
    return masterkey.unseal(bytes(sealed), purpose=keystore.KEY_PURPOSE, bound_to=key.keyid)


def test_master_key_at_rest_the_database_never_holds_a_private_key(
    db: None, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    dump = _database_dump()
    secrets = [
        keystore.signer(k)._private_key.private_bytes_raw() for k in SigningKey.objects.all()
    ]  # type: ignore[attr-defined]
    secrets.append(content_key(Bundle.objects.get(pk=bundle.pk)))
    assert len(secrets) == 3 + 3 + 3 + 1 + 1  # image 3 root + 3 roles, director 3 root + 1
    for secret in secrets:
        assert secret not in dump and secret.hex().encode() not in dump
    assert bundle.content_key_sealed is not None
    assert (
        masterkey.unseal(
            bytes(bundle.content_key_sealed), purpose=CONTENT_KEY_PURPOSE, bound_to=bundle.pk
        )
        == secrets[-1]
    )


def test_export_root_takes_the_root_keys_offline(db: None, tmp_path: Path) -> None:
    image_repo.ensure_repositories()
    state = enrolled_state()
    key_file = tmp_path / "root-keys.json"
    out = StringIO()
    call_command("tinyfleet_keys", "export-root", str(key_file), stdout=out)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(json.loads(key_file.read_text())["keys"]) == 6
    roots = SigningKey.objects.filter(role="root")
    assert all(k.status == KeyStatus.OFFLINE and k.private_key_sealed is None for k in roots)
    with pytest.raises(CommandError, match="--root-key"):
        call_command("tinyfleet_keys", "rotate", "timestamp")
    with pytest.raises(CommandError, match="no online root key"):
        call_command("tinyfleet_keys", "export-root", str(key_file))
    # The online roles still work: publishing needs no root key.
    assert image_repo.refresh_image(timezone.now() + timedelta(hours=2)) == ["timestamp"]
    call_command("tinyfleet_keys", "rotate", "timestamp", "--root-key", str(key_file), stdout=out)
    chain = [bytes(r.data) for r in image_repo.root_chain("image")[1:]]
    assert update_root_chain(state, chain).version == 2
    verify_image_metadata(state, *image_set(), timezone.now())
    assert AuditEvent.objects.filter(action="keys.export-root").exists()


def test_a_root_key_file_for_another_server_is_refused(db: None, tmp_path: Path) -> None:
    image_repo.ensure_repositories()
    bogus = tmp_path / "keys.json"
    bogus.write_text(
        json.dumps({"format": keystore.ROOT_KEY_FILE_FORMAT, "keys": [{"keyid": "x"}]})
    )
    with pytest.raises(CommandError, match="unknown to this server"):
        call_command("tinyfleet_keys", "rotate", "root", "--root-key", str(bogus))


def test_status_shows_keys_thresholds_and_expiry(db: None) -> None:
    out = StringIO()
    call_command("tinyfleet_keys", "init", stdout=out)
    call_command("tinyfleet_keys", "init", stdout=out)
    call_command("tinyfleet_keys", "rotate", "snapshot", stdout=out)
    call_command("tinyfleet_keys", "status", stdout=out)
    text = out.getvalue()
    assert "created both repositories" in text and "already initialised" in text
    assert "image: root v2" in text and "threshold 2/3" in text
    assert "retired: image/snapshot" in text
    assert "master key:" in text
