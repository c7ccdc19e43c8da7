"""Real, varied English text with no download: docstrings of the Python standard library
and the one-line descriptions of the installed distributions.

Generated template sentences are easier than what users send (short, regular, a few
topics), so a quantized model can pass on them and fail on real text. These texts were
written by many people about many subjects; they are deduplicated, length-filtered and
shuffled with a fixed seed. The standard-library part comes first, so every venv of
one Python version yields the same first ~1,300 texts whatever else is installed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

__all__ = ["corpus_digest", "real_texts"]

_MIN_CHARS, _MAX_CHARS, _MIN_WORDS = 40, 400, 7
# Folders of generated, test or legacy code whose docstrings repeat or are not prose.
_SKIP = ("test", "idlelib", "lib2to3", "ensurepip", "site-packages", "dist-packages", "turtledemo")
_MAX_FILES = 250


def _clean(text: str) -> str | None:
    first = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    flat = " ".join(first.split())
    if not _MIN_CHARS <= len(flat) <= _MAX_CHARS or len(flat.split()) < _MIN_WORDS:
        return None
    letters = sum(c.isalpha() or c == " " for c in flat)
    if letters < 0.85 * len(flat) or any(s in flat for s in (">>>", "::", "->", "()", " = ")):
        return None  # code, signatures or reST directives rather than prose
    return flat


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
    found = []
    for node in nodes:
        doc = ast.get_docstring(node)
        cleaned = _clean(doc) if doc else None
        if cleaned:
            found.append(cleaned)
    return found


def _stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not any(part.startswith(_SKIP) for part in p.relative_to(root).parts)
    )[:_MAX_FILES]
    return [text for file in files for text in _docstrings(file)]


def _distribution_texts() -> list[str]:
    found = []
    for dist in importlib.metadata.distributions():
        summary = dist.metadata["Summary"] or ""
        cleaned = _clean(summary)
        if cleaned:
            found.append(cleaned)
    return found


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    # The standard library's docstrings come first and alone decide their order, so the
    # sets a figure was measured on are the same in every venv of one Python version;
    # the installed distributions (which differ between venvs) only extend the list.
    stdlib = sorted(set(_stdlib_texts()))
    random.Random(20261204).shuffle(stdlib)
    extra = sorted(set(_distribution_texts()) - set(stdlib))
    random.Random(20261205).shuffle(extra)
    return tuple(stdlib + extra)


def real_texts(count: int, offset: int = 0) -> list[str]:
    """`count` distinct real texts starting at `offset` of the shuffled corpus (so
    disjoint ranges give disjoint sets: selection, held-out, calibration)."""
    corpus = _corpus()
    return list(corpus[offset : offset + count])


def corpus_digest(texts: list[str]) -> str:
    """A short digest recorded with a figure, so a reader can tell which texts it used."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
