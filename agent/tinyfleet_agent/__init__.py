"""tinyfleet device agent.

This package must never import django, celery, torch or the server packages
(`fleet`, `compression`, `tinyfleet`); a test enforces it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
