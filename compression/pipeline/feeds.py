"""Feed a model the way its graph expects, the same way the device does.

Third-party graphs take fixed shapes ([1, 64]), a float additive 4-D attention mask
instead of the 0/1 [batch, seq] one, or decorated input names. The agent already fits
feeds to such graphs (`tinyfleet_agent`'s runtime); evaluation, calibration and the
benchmark use that very code through `FittedSession`, so a number measured here is
measured on exactly the inputs a device would build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tinyfleet_agent.protocol import TensorSpec, onnx_input_specs
from tinyfleet_agent.protocol import fit_feeds as agent_fit_feeds

__all__ = ["FittedSession", "accepted_length", "fit_feeds", "onnx_specs", "static_sequence"]


def onnx_specs(session: Any) -> tuple[TensorSpec, ...]:
    """The agent's view of an onnxruntime session's inputs."""
    return onnx_input_specs(session)


def fit_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Feeds renamed, cast, padded or truncated, and masks rebuilt for `specs`.

    Raises:
        ValueError: an input is missing or cannot be fitted (rank or batch differs).
    """
    arrays = agent_fit_feeds(specs, feeds)
    return {spec.name: array for spec, array in zip(specs, arrays, strict=True)}


def static_sequence(specs: Sequence[TensorSpec]) -> int | None:
    """The fixed token length of a text graph ([1, 64] input ids), else None."""
    for spec in specs:
        if "input_ids" in spec.name and len(spec.shape) == 2 and spec.is_static:
            return spec.shape[1]
    return None


class FittedSession:
    """An onnxruntime session whose `run` fits feeds first (same API otherwise)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.specs = onnx_specs(session)
        self.fixed_sequence = static_sequence(self.specs)

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def fit(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return fit_feeds(self.specs, feeds)

    def run(self, output_names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        first = next(iter(feeds.values()), None)
        rows = int(np.shape(first)[0]) if first is not None and np.ndim(first) else 0
        if rows > 1 and self.specs and all(s.shape[:1] == (1,) for s in self.specs):
            # A graph exported at batch 1: one row at a time, as the device runs it.
            parts = [
                self.run(output_names, {k: v[i : i + 1] for k, v in feeds.items()})
                for i in range(rows)
            ]
            return [np.concatenate(outs) for outs in zip(*parts, strict=True)]
        result: list[np.ndarray] = self.session.run(output_names, self.fit(feeds))
        return result


def accepted_length(session: Any, wanted: int, floor: int = 8) -> int:
    """The longest token sequence up to `wanted` the graph runs (halving from `wanted`).

    Small or exported-at-a-length models have short position tables; real texts are
    longer than generated sentences, so truncation must respect the graph, not a default.
    """
    fixed = getattr(session, "fixed_sequence", None)
    if fixed:
        return min(int(fixed), wanted)
    length = wanted
    while length > floor:
        ids = np.full((1, length), 5, dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        try:
            session.run(None, feeds)
            return length
        except Exception:  # onnxruntime raises its own types for shape errors
            length //= 2
    return floor
