"""Chain pages: the version page offers pipelines that fit its format, the form starts a
chain (or says what is wrong), and the chain page shows its path; viewers only look."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from compression.models import Chain, Job, ModelVersion, VersionStatus
from tests.compression.distill_helpers import build_teacher
from tests.compression.helpers import upload
from tests.fixtures.tiny_models import build_tiny_bert_onnx, zip_dir

pytestmark = pytest.mark.django_db(transaction=True)


def _ready(api: Any, path: Path, name: str) -> ModelVersion:
    body = upload(api, path, name=name).json()
    # Inspection runs in a worker elsewhere; these tests are about the pages only.
    version = ModelVersion.objects.get(pk=body["id"])
    version.status = VersionStatus.READY
    version.inspection = {"model_type": "bert", "num_layers": 4, "hidden_size": 32}
    version.save()
    return version


def test_it_starts_a_distill_chain_from_the_version_page(
    client: Client, alice: Any, alice_api: Any, tmp_path: Path
) -> None:
    teacher = build_teacher(tmp_path / "t")
    version = _ready(alice_api, zip_dir(teacher, tmp_path / "t.zip"), "teacher")
    client.force_login(alice)
    page = client.get(f"/versions/{version.pk}/").content.decode()
    assert 'data-testid="chain-form"' in page and "Distill (3 layers)" in page
    response = client.post(f"/versions/{version.pk}/chain/", {"preset": "distill-int8"})
    chain = Chain.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/chains/{chain.pk}/"
    assert [s["recipe"] for s in chain.steps] == ["distill", "export-onnx", "onnx-int8-auto"]
    job = Job.objects.get(chain=chain)
    assert job.chain_step == 0 and job.recipe == "distill" and job.version_id == version.pk
    shown = client.get(f"/chains/{chain.pk}/").content.decode()
    assert shown.count('data-testid="chain-step"') == 3
    assert "export-onnx" in shown and "waiting" in shown and f"#{job.pk}" in shown
    assert f"/chains/{chain.pk}/" in client.get("/chains/").content.decode()


def test_it_explains_a_chain_that_does_not_fit_and_starts_nothing(
    client: Client, alice: Any, alice_api: Any, tmp_path: Path
) -> None:
    version = _ready(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx"), "onnx-model")
    client.force_login(alice)
    page = client.get(f"/versions/{version.pk}/").content.decode()
    assert 'data-testid="chain-form"' not in page  # no preset starts from ONNX
    response = client.post(
        f"/versions/{version.pk}/chain/",
        {"steps": '[{"recipe": "distill"}]'},
        follow=True,
    )
    assert "step 1 (distill)" in response.content.decode()
    assert "applies to hf-dir models" in response.content.decode()
    assert not Chain.objects.exists() and not Job.objects.filter(recipe="distill").exists()


def test_a_viewer_sees_chains_but_cannot_start_one(
    client: Client, bob: Any, alice_api: Any, tmp_path: Path
) -> None:
    teacher = build_teacher(tmp_path / "t")
    version = _ready(alice_api, zip_dir(teacher, tmp_path / "t.zip"), "teacher")
    client.force_login(bob)
    assert 'data-testid="chain-form"' not in client.get(f"/versions/{version.pk}/").content.decode()
    response = client.post(f"/versions/{version.pk}/chain/", {"preset": "distill-int8"})
    assert response.status_code == 403
    assert not Chain.objects.exists()
    assert client.get("/chains/").status_code == 200
