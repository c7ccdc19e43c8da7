"""Two runs of the same publish task (a redelivery while the first still runs) must not
leave signed metadata that disagrees with the stored ciphertext."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.db import connection

from fleet.models import Bundle
from fleet.security.publish import request_publish
from fleet.security.publish_worker import run_publish
from tests.fleet.publish_helpers import make_version, onnx_files


@pytest.mark.django_db(transaction=True)
def test_racing_publish_runs_sign_exactly_the_stored_bytes(tmp_path: Path) -> None:
    bundle, _ = request_publish(make_version(onnx_files(tmp_path)), None)
    outcomes: list[str] = []

    def publish() -> None:
        outcomes.append(run_publish(bundle.pk))
        connection.close()

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = Bundle.objects.get(pk=bundle.pk)
    assert done.status == "published", (outcomes, done.error)
    with default_storage.open(done.ciphertext_key) as handle:
        stored = hashlib.sha256(handle.read()).hexdigest()
    assert stored == done.ciphertext_sha256 == done.record["cipher"]["ciphertext_sha256"]
    leftovers = default_storage.listdir("bundles")[1]
    assert [f for f in leftovers if f.startswith(bundle.pk)] == [Path(done.ciphertext_key).name]
