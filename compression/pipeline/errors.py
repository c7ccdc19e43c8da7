"""Errors raised by the compression pipeline.

Their messages are shown to operators verbatim (API `{"error": ...}` bodies and
pages), so each one says what is wrong with the upload and what to send instead.
"""

from __future__ import annotations


class InvalidModelError(ValueError):
    """The uploaded model or archive is malformed, unsafe or unsupported.

    The message is user-facing: it names the problem and, where one exists, the
    upload that would be accepted instead. It never contains a stack trace.
    """
