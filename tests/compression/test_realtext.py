"""The built-in real-text corpus: varied prose, disjoint ranges, and the same texts in
every venv (installed distributions must not reshuffle what a figure was measured on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compression.pipeline import realtext
from compression.pipeline.realtext import corpus_digest, real_texts


@pytest.fixture(autouse=True)
def fresh_corpus() -> Iterator[None]:
    realtext._corpus.cache_clear()
    yield
    realtext._corpus.cache_clear()


def test_ranges_are_disjoint_prose() -> None:
    selection, heldout = real_texts(180, 0), real_texts(300, 180)
    assert len(selection) == 180 and len(heldout) == 300
    assert not set(selection) & set(heldout)
    assert all(len(t.split()) >= 7 and ">>>" not in t for t in selection + heldout)


def test_other_installed_packages_do_not_change_the_evaluation_texts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = real_texts(600, 0)
    monkeypatch.setattr(
        realtext,
        "_distribution_texts",
        lambda: [
            f"An imaginary package number {i} that does several useful things." for i in range(50)
        ],
    )
    realtext._corpus.cache_clear()
    after = real_texts(600, 0)
    assert corpus_digest(after) == corpus_digest(before)
    assert "An imaginary package number 7 that does several useful things." in real_texts(5000)
