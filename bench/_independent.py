"""The int8 benches' independent texts: real text beyond every text onnx-int8-auto (and
onnx-int8-qat) selects, calibrates, holds out or trains on, with the fp32 PyTorch
reference embeddings and an ONNX model's embeddings on them, each text run alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class IndependentSet:
    texts: list[str]
    reference: np.ndarray
    encoded: Any

    @classmethod
    def build(cls, model_dir: Path, count: int) -> IndependentSet:
        from compression.pipeline.auto_int8 import AutoInt8Params
        from compression.pipeline.evaluate import torch_embeddings
        from compression.pipeline.realtext import real_texts
        from compression.pipeline.textdata import encode

        params = AutoInt8Params()
        offset = params.eval_samples // 2 + params.heldout_samples + params.calibration_samples
        texts = real_texts(count, offset)
        reference = torch_embeddings(model_dir, texts)
        return cls(texts, reference, encode(model_dir / "tokenizer.json", texts))

    def embeddings(self, path: Path) -> np.ndarray:
        from compression.pipeline.evaluate import l2_normalize, mean_pool, open_session

        session = open_session(path, 1)
        rows = [
            mean_pool(
                session.run(None, self.encoded.row(i).all_feeds())[0],
                self.encoded.row(i).attention_mask,
            )[0]
            for i in range(len(self.texts))
        ]
        return l2_normalize(np.stack(rows))

    def fidelity(self, path: Path) -> dict[str, Any]:
        from compression.pipeline.evaluate import embedding_fidelity

        return embedding_fidelity(self.reference, self.embeddings(path)).to_dict()
