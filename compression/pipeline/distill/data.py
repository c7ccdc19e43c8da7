"""Training and held-out texts for distillation and pruning recovery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compression.pipeline.corpus import build_corpus, is_held_out
from compression.pipeline.distill.params import MIN_TRAIN_TEXTS, DistillError
from compression.pipeline.textdata import DatasetError, load_jsonl

__all__ = ["TrainingTexts", "training_texts"]


@dataclass(frozen=True)
class TrainingTexts:
    train: list[str]
    # Labels of the training texts (classifiers with a labelled dataset), else None.
    labels: list[int] | None
    held_out: list[str]
    source: str


def _label_ids(raw: Sequence[object]) -> list[int]:
    """Dataset labels as class indices: integers as they are, strings in sorted order."""
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return [int(x) for x in raw]  # type: ignore[call-overload]
    names = sorted({str(x) for x in raw})
    return [names.index(str(x)) for x in raw]


def training_texts(
    train_path: str | None,
    eval_path: str | None,
    *,
    limit: int,
    held_out: int,
    min_texts: int = MIN_TRAIN_TEXTS,
) -> TrainingTexts:
    """The texts a student trains on and the held-out texts it is measured on.

    With the operator's dataset the held-out texts are their evaluation dataset when
    given, else the ~10% of their texts that ``is_held_out`` reserves (never trained on).
    Without a dataset both come from the built-in corpus's own splits.

    Raises:
        DistillError: unreadable data (invalid JSON or UTF-8) or fewer than
            ``min_texts`` training texts.
    """
    if train_path is None:
        corpus = build_corpus(limit=limit, held_out_limit=held_out)
        texts, labels, source = corpus.train, None, f"built-in corpus ({corpus.digest[:12]})"
        reserved = corpus.held_out
    else:
        try:
            examples = load_jsonl(train_path)
        except (DatasetError, UnicodeDecodeError) as exc:
            raise DistillError(
                f"the training dataset cannot be read: {_plain(exc, train_path)}"
            ) from None
        pairs = [(e.text, e.label) for e in examples]
        kept = [p for p in pairs if not is_held_out(p[0])]
        reserved = [t for t, _ in pairs if is_held_out(t)]
        kept = kept[:limit]
        texts = [t for t, _ in kept]
        raw = [lab for _, lab in kept]
        labels = _label_ids(raw) if raw and all(x is not None for x in raw) else None
        source = "training dataset"
    if eval_path is not None:
        try:
            reserved = [e.text for e in load_jsonl(eval_path)]
        except (DatasetError, UnicodeDecodeError) as exc:
            raise DistillError(
                f"the evaluation dataset cannot be read: {_plain(exc, eval_path)}"
            ) from None
        train_set = set(texts)
        reserved = [t for t in reserved if t not in train_set]
    if len(texts) < min_texts:
        raise DistillError(
            f"the training set has {len(texts)} texts after holding out the evaluation "
            f"split; distillation needs at least {min_texts}"
        )
    if len(reserved) < 8:
        raise DistillError(
            f"only {len(reserved)} held-out texts to measure the student on; give an "
            "evaluation dataset or more training texts"
        )
    return TrainingTexts(texts, labels, reserved[:held_out], source)


def _plain(exc: Exception, path: str) -> str:
    """The problem without the worker's scratch path."""
    if isinstance(exc, UnicodeDecodeError):
        return "it is not valid UTF-8 text"
    return str(exc).replace(f"{path}:", "line ").replace(path, "the file")
