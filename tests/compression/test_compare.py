"""The comparison page: Pareto frontier, dominated variants greyed, figures that cannot be
trusted shown as "not measured" and never starred, unmeasured latency never plotted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from compression.compare import comparison_row, mark_pareto, recommend
from compression.models import ModelVersion, RegisteredModel

pytestmark = pytest.mark.django_db

OUTPUTS = {"outputs": [{"name": "ids", "role": "echo"}, {"name": "pooled", "role": "pooled"}]}


def _version(model: RegisteredModel, number: int, parent: Any = None, **kw: Any) -> ModelVersion:
    fields: dict[str, Any] = {
        "format": "onnx",
        "storage_key": f"models/x/{number}",
        "original_filename": "m.onnx",
        "sha256": f"{number:064x}",
        "status": "ready",
        "inspection": {**OUTPUTS, "primary_output": "pooled"},
        "pipeline": {"output": "pooled"},
        **kw,
    }
    fields.setdefault("size_bytes", 90_000_000)
    return ModelVersion.objects.create(model=model, number=number, parent=parent, **fields)


def _metrics(cosine: float, latency: float | None, **fidelity: Any) -> dict[str, Any]:
    bench = {"latency_p50_ms": latency} if latency is not None else {}
    return {
        "fidelity": {"cosine_mean": cosine, "nn_agreement": 0.98, "output": "pooled", **fidelity},
        "benchmark": bench,
        "latency_ratio": 0.6,
    }


@pytest.fixture
def family() -> dict[str, ModelVersion]:
    model = RegisteredModel.objects.create(name="st", task="text-embedding")
    parent = _version(model, 1, metrics={"benchmark": {"latency_p50_ms": 10.0}})
    return {
        "parent": parent,
        "good": _version(model, 2, parent, size_bytes=23_000_000, metrics=_metrics(0.9985, 6.0)),
        # Bigger, slower and less faithful than "good": dominated.
        "worse": _version(model, 3, parent, size_bytes=30_000_000, metrics=_metrics(0.995, 7.0)),
        # The fastest and smallest, but its perfect score failed the sanity checks.
        "fake": _version(
            model,
            4,
            parent,
            size_bytes=20_000_000,
            metrics=_metrics(
                1.0, 5.0, measured=False, reason="a perfect score although the weights changed"
            ),
        ),
        # Measured on output [0], the echo: not the primary output.
        "echo": _version(
            model, 5, parent, size_bytes=21_000_000, metrics=_metrics(1.0, 5.5, output="ids")
        ),
        "no_latency": _version(
            model, 6, parent, size_bytes=22_000_000, metrics=_metrics(0.999, None)
        ),
    }


def test_it_never_recommends_a_figure_that_was_not_measured_on_the_primary_output(
    family: dict[str, ModelVersion],
) -> None:
    rows = [comparison_row(v) for v in family.values()]
    by_id = {r["id"]: r for r in rows}
    assert "perfect score" in by_id[family["fake"].pk]["unmeasured"]
    assert "not on the primary output" in by_id[family["echo"].pk]["unmeasured"]
    assert by_id[family["fake"].pk]["fidelity"] is None
    assert recommend(rows) == family["good"].pk


def test_it_marks_the_pareto_frontier_and_the_dominated(family: dict[str, ModelVersion]) -> None:
    rows = [comparison_row(v) for v in family.values()]
    mark_pareto(rows)
    pareto = {r["id"]: r["pareto"] for r in rows}
    assert pareto[family["good"].pk] == "frontier"
    assert pareto[family["parent"].pk] == "frontier"  # the most faithful, by definition
    assert pareto[family["worse"].pk] == "dominated"
    assert pareto[family["fake"].pk] == "unknown" and pareto[family["no_latency"].pk] == "unknown"


def test_it_shows_the_page_with_not_measured_and_no_zero_latency(
    family: dict[str, ModelVersion], alice: Any
) -> None:
    client = Client()
    client.force_login(alice)
    page = client.get(f"/models/{family['parent'].model_id}/compare/").content.decode()
    assert page.count('data-testid="recommended"') == 1
    assert 'data-testid="not-measured"' in page and 'data-pareto="dominated"' in page
    data = json.loads(page.split('id="compare-data" type="application/json">')[1].split("<")[0])
    no_latency = next(r for r in data if r["id"] == family["no_latency"].pk)
    assert no_latency["latency_ms"] is None  # the chart skips it rather than drawing 0


def test_it_uploads_and_previews_a_dataset_in_the_browser(alice: Any, tmp_path: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    lines = [{"text": f"the {w} is late again", "label": w} for w in ("bus", "bus", "train")]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    client = Client()
    client.force_login(alice)
    answer = client.post(
        "/datasets/", {"name": "commute", "file": SimpleUploadedFile("commute.jsonl", body)}
    )
    assert answer.status_code == 302
    page = client.get(answer["Location"]).content.decode()
    assert "the train is late again" in page and 'data-testid="label-histogram"' in page
    assert "<td>bus</td><td>2</td>" in page
    listing = client.get("/datasets/").content.decode()
    assert "commute" in listing and "<td>3</td>" in listing
    bad = client.post("/datasets/", {"file": SimpleUploadedFile("x.txt", b"a,b")}, follow=True)
    assert "datasets are .jsonl" in bad.content.decode()


def test_it_refuses_a_dataset_upload_from_a_viewer(bob: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = Client()
    client.force_login(bob)
    answer = client.post("/datasets/", {"file": SimpleUploadedFile("x.jsonl", b'{"text": "a"}')})
    assert answer.status_code == 403


def test_fidelity_to_the_original_follows_the_chain_and_never_invents_a_figure(
    family: dict[str, ModelVersion], alice: Any
) -> None:
    """A chain's later step shows the figure measured against the root, not its parent's;
    a step measured on nothing shows "not measured" and is left off the curve."""
    good = family["good"]
    model = good.model
    fp = {"cosine_mean": 0.97, "nn_agreement": 0.9, "measured": True, "origin_version": 1}
    int8 = _version(
        model, 7, good, size_bytes=6_000_000,
        metrics={**_metrics(0.999, 3.0), "fidelity_to_origin": fp},
    )  # fmt: skip
    lost = _version(
        model, 8, good, size_bytes=6_000_000,
        metrics={**_metrics(0.999, 2.0), "fidelity_to_origin": {"measured": False, "reason": "x"}},
    )  # fmt: skip
    listed = [comparison_row(v) for v in ModelVersion.objects.all()]
    rows = {r["id"]: r for r in listed}
    # 0.999 against its parent, 0.97 against the original: the fast int8 is no candidate.
    assert recommend(listed) == good.pk
    close = {"cosine_mean": 0.9991, "measured": True, "origin_version": 1}
    faithful = _version(
        model, 9, good, size_bytes=6_000_000,
        metrics={**_metrics(0.9995, 2.5), "fidelity_to_origin": close},
    )  # fmt: skip
    assert recommend([*listed, comparison_row(faithful)]) == faithful.pk
    assert rows[family["parent"].pk]["origin_fidelity"] == 1.0
    assert rows[good.pk]["origin_fidelity"] == pytest.approx(0.9985)  # its parent is the root
    assert rows[int8.pk]["origin_fidelity"] == 0.97  # not its 0.999 against `good`
    assert rows[int8.pk]["origin_nn"] == 0.9
    assert rows[lost.pk]["origin_fidelity"] is None and rows[lost.pk]["origin_reason"] == "x"
    assert rows[family["fake"].pk]["origin_fidelity"] is None  # the sanity check still holds
    client = Client()
    client.force_login(alice)
    page = client.get(f"/models/{model.pk}/compare/").content.decode()
    assert 'id="origin-chart"' in page
    cells = page.split('data-testid="origin-fidelity">')[1:]
    assert any(c.startswith("0.9700") for c in cells)
    assert sum("not measured" in c.split("</td>")[0] for c in cells) >= 2
