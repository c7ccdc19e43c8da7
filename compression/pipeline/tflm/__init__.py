"""Recipe ``tflm``: tiny Transformers for TFLite Micro (full int8, C array, arena)."""

from compression.pipeline.tflm.params import (
    TflmError,
    TflmParams,
    TooLargeError,
    UnsupportedOpsError,
)

__all__ = ["TflmError", "TflmParams", "TooLargeError", "UnsupportedOpsError"]
