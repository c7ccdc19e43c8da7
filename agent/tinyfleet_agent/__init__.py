"""tinyfleet device agent.

This package must never import django, celery, torch or the server packages
(`fleet`, `compression`, `tinyfleet`); a test and `make lint` enforce it. The server uses
the agent only through `tinyfleet_agent.protocol` (its contract with the server) and the
documented public modules; `_internal` may change without notice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["LocalApi", "Predictor", "__version__"]

if TYPE_CHECKING:
    from .localapi import LocalApi
    from .predictor import Predictor


def __getattr__(name: str) -> Any:
    # Lazy: `import tinyfleet_agent.bundle` (the server does) stays cheap.
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    if name == "LocalApi":
        from .localapi import LocalApi

        return LocalApi
    raise AttributeError(f"module 'tinyfleet_agent' has no attribute {name!r}")
