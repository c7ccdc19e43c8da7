"""A built-in, domain-neutral English corpus for users without data of their own.

The text is real prose written by people, available offline on every machine that runs
tinyfleet: the descriptions (README long descriptions) of the installed Python
distributions, then the docstrings of their modules, classes and functions. It is
cleaned of markup and code, cut into sentences, filtered for sentence-like English,
deduplicated, and split into ``train`` and ``held_out`` by a hash of each sentence - so
the split of a sentence never depends on which other packages are installed, and a
student never trains on a held-out sentence.

What ends up in the corpus depends on the installed packages; ``Corpus.digest`` names the
exact text used, for lineage and reports.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Corpus", "build_corpus", "clean_sentences", "is_held_out"]

HELD_OUT_PERCENT = 10
MIN_WORDS, MAX_WORDS = 5, 48
# Source files larger than this are generated tables, not prose.
MAX_SOURCE_BYTES = 400_000

_MARKUP_LINE = re.compile(
    r"^\s*(\.\.|>>>|\.\.\.|\||#|```|~~~|={3,}|-{3,}|\*{3,}|:[a-z]+:|\$ |[-*+] \[|<)", re.I
)
_INLINE = [
    (re.compile(r"`{1,2}([^`]+)`{1,2}_?"), r"\1"),  # rst/markdown literals keep their text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # markdown links keep their label
    (re.compile(r"\*\*?([^*]+)\*\*?"), r"\1"),
    (re.compile(r":[a-z]+:`([^`]+)`"), r"\1"),
    (re.compile(r"https?://\S+"), " "),
    (re.compile(r"\s+"), " "),
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][a-z'-]*[,;:.!?]?$")
_CODEY = re.compile(r"[{}<>=\\@#$%^~|]|\w\(|\w_\w|\w\.\w|\s-{1,2}\w|\(\)|\.\.")


def is_held_out(sentence: str) -> bool:
    """True for the ~10% of sentences reserved for evaluation (a property of the text)."""
    digest = hashlib.sha256(sentence.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def _english_enough(sentence: str) -> bool:
    words = sentence.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS):
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?" or _CODEY.search(sentence):
        return False
    # Mostly plain words: identifiers, numbers and symbols make it code, not prose.
    plain = sum(bool(_WORD.match(w)) for w in words)
    return plain >= 0.85 * len(words)


def clean_sentences(text: str) -> Iterator[str]:
    """Sentences of prose in ``text`` (markdown/rst/docstring), markup and code dropped."""
    paragraph: list[str] = []
    in_fence = False
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence or raw.startswith(("    ", "\t")) or _MARKUP_LINE.match(line):
            line = ""
        if line:
            paragraph.append(line)
            continue
        if paragraph:
            joined = " ".join(paragraph)
            for pattern, repl in _INLINE:
                joined = pattern.sub(repl, joined)
            for sentence in _SENTENCE_END.split(joined.strip()):
                sentence = sentence.strip()
                if _english_enough(sentence):
                    yield sentence
            paragraph = []


def _descriptions() -> Iterator[tuple[str, str]]:
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        meta: Any = dist.metadata  # an email.message.Message underneath
        body = meta.get_payload() or meta.get("Description") or ""
        summary = meta.get("Summary") or ""
        yield str(meta["Name"]), f"{summary}\n\n{body}"


def _docstrings(dist: importlib.metadata.Distribution) -> Iterator[str]:
    for file in sorted(dist.files or [], key=str):
        if file.suffix != ".py" or "test" in str(file).lower():
            continue
        path = Path(str(dist.locate_file(file)))
        try:
            if path.stat().st_size > MAX_SOURCE_BYTES:
                continue
            tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield doc


@dataclass
class Corpus:
    train: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    sources: int = 0

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for sentence in [*self.train, "\0", *self.held_out]:
            h.update(sentence.encode() + b"\n")
        return h.hexdigest()


def build_corpus(limit: int = 20_000, held_out_limit: int = 2_000) -> Corpus:
    """Up to ``limit`` training and ``held_out_limit`` held-out sentences, deterministic for a
    given set of installed packages: descriptions first, then docstrings, distributions in
    name order."""
    corpus = Corpus()
    seen: set[str] = set()

    def take(text: str) -> bool:
        """Add the sentences of ``text``; True once both splits are full."""
        for sentence in clean_sentences(text):
            key = sentence.lower()
            if key in seen:
                continue
            seen.add(key)
            bucket, cap = (
                (corpus.held_out, held_out_limit)
                if is_held_out(sentence)
                else (corpus.train, limit)
            )
            if len(bucket) < cap:
                bucket.append(sentence)
        return len(corpus.train) >= limit and len(corpus.held_out) >= held_out_limit

    for _, text in _descriptions():
        corpus.sources += 1
        if take(text):
            return corpus
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        corpus.sources += 1
        for doc in _docstrings(dist):
            if take(doc):
                return corpus
    return corpus
