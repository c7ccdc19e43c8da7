"""Bundle and security pages: role checks, content, the publish button's view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.test import Client
from django.utils.html import escape

from fleet.models import Bundle
from fleet.security import image_repo, masterkey
from tests.fleet.publish_helpers import make_version, onnx_files, publish_now


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_security_page_shows_keys_thresholds_expiry_and_history(db: None, alice: Any) -> None:
    image_repo.ensure_repositories()
    call_command("tinyfleet_keys", "rotate", "timestamp")
    page = logged_in(alice).get("/security/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Image repository" in html and "Director" in html
    assert "2 of 3" in html  # root threshold
    assert "2.root.json" in html and "1.root.json" in html
    assert "retired" in html and "image / timestamp" in html
    assert masterkey.fingerprint() in html and escape(masterkey.source()) in html
    for key in image_repo.load(image_repo.current_root_row("image")).signed.keys:
        assert key[:18] in html


def test_security_page_needs_an_operator(db: None, bob: Any) -> None:
    assert logged_in(bob).get("/security/").status_code == 403
    assert Client().get("/security/").status_code == 302


def test_bundle_pages_show_the_signed_record(db: None, bob: Any, tmp_path: Path) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    client = logged_in(bob)
    listing = client.get("/bundles/").content.decode()
    assert bundle.pk in listing and "onnxruntime" in listing and "published" in listing
    detail = client.get(f"/bundles/{bundle.pk}/")
    html = detail.content.decode()
    assert detail.status_code == 200
    assert bundle.record is not None and bundle.record["cipher"]["ciphertext_sha256"] in html
    assert "Signed by the image repository" in html and "&quot;golden_set_sha256&quot;" in html
    assert "Export for offline check" not in html  # viewers see no download buttons
    polled = client.get(f"/bundles/{bundle.pk}/", HTTP_HX_REQUEST="true")
    assert polled.status_code == 286  # nothing to wait for: htmx stops polling
    assert client.get("/bundles/b-missing/").status_code == 404


def test_publish_view_publishes_and_redirects_to_the_bundle(
    db: None, alice: Any, bob: Any, tmp_path: Path
) -> None:
    version = make_version(onnx_files(tmp_path))
    url = f"/versions/{version.pk}/publish/"
    assert logged_in(bob).post(url).status_code == 403
    assert logged_in(alice).get(url).status_code == 405
    response = logged_in(alice).post(url)
    bundle = Bundle.objects.get(version=version)
    assert response.status_code == 302 and response["Location"] == f"/bundles/{bundle.pk}/"
    again = logged_in(alice).post(url, follow=True)
    assert "already bundle" in again.content.decode()
    assert Bundle.objects.count() == 1


def test_publish_view_explains_a_refusal(db: None, alice: Any, tmp_path: Path) -> None:
    version = make_version(onnx_files(tmp_path), golden=False)
    response = logged_in(alice).post(f"/versions/{version.pk}/publish/", follow=True)
    assert response.redirect_chain[-1][0] == f"/versions/{version.pk}/"
    assert "has no golden set" in response.content.decode()
    assert not Bundle.objects.exists()
