"""Text and tensor data for calibration and evaluation.

``default_sentences()`` generates a deterministic, varied English set from
templates and word lists in code, so evaluation needs no download and the same
sentences are used on every machine.  ``load_jsonl`` / ``load_npz`` read
operator datasets; ``encode`` tokenizes with a ``tokenizer.json``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "Encoded",
    "TextExample",
    "default_sentences",
    "encode",
    "load_jsonl",
    "load_npz",
    "load_tokenizer",
]


class DatasetError(ValueError):
    """A dataset is empty, malformed or does not match the model."""


# Each topic: subjects, verb phrases, objects, details.  Templates combine them
# so one topic yields many sentences that are related but not identical, which
# is what makes nearest-neighbour agreement a meaningful test.
_TOPICS: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    "weather": (
        ["the storm", "a cold front", "the morning fog", "heavy rain", "the heatwave", "snow"],
        ["is expected to reach", "has flooded", "will move across", "closed", "delayed"],
        ["the coast", "the northern valleys", "most of the city", "the mountain roads"],
        ["by Friday night", "despite the forecast", "for the third day in a row"],
    ),
    "cooking": (
        ["the chef", "my grandmother", "the bakery", "a home cook", "the restaurant"],
        ["slowly roasts", "seasons", "prepares", "serves", "burned"],
        ["the garlic and onions", "fresh sourdough bread", "a spicy tomato soup", "lemon cake"],
        ["with a pinch of salt", "every Sunday morning", "for about forty minutes"],
    ),
    "sports": (
        ["the goalkeeper", "the home team", "our coach", "the young striker", "the referee"],
        ["won", "lost", "trained hard for", "celebrated", "was suspended before"],
        ["the championship final", "the match against the rivals", "the penalty shootout"],
        ["in front of a sold-out stadium", "after extra time", "last season"],
    ),
    "technology": (
        ["the new phone", "the laptop", "our database server", "the software update"],
        ["crashed during", "speeds up", "drains the battery during", "failed to install"],
        ["video calls", "the nightly backup", "large file transfers", "the boot sequence"],
        ["after the latest patch", "on older hardware", "without any warning"],
    ),
    "medicine": (
        ["the doctor", "the nurse", "the patient", "a new vaccine", "the clinic"],
        ["prescribed", "recommended", "reduced", "treated", "monitored"],
        ["antibiotics for the infection", "the blood pressure", "rest and fluids"],
        ["for two weeks", "after the surgery", "in elderly patients"],
    ),
    "finance": (
        ["the central bank", "stock prices", "the startup", "investors", "the company"],
        ["raised", "cut", "reported", "lost confidence in", "doubled"],
        ["interest rates", "quarterly profits", "its funding", "the bond market"],
        ["amid fears of inflation", "for the first time in a decade", "this quarter"],
    ),
    "travel": (
        ["the train", "our flight", "the tourists", "the ferry", "the hotel"],
        ["was cancelled to", "arrived late in", "explored", "offered tours of", "crossed"],
        ["Lisbon", "the old harbour", "the national park", "the island", "the capital"],
        ["during the holidays", "because of the strike", "early in the morning"],
    ),
    "music": (
        ["the orchestra", "the band", "a young pianist", "the choir", "the singer"],
        ["performed", "recorded", "rehearsed", "released", "cancelled"],
        ["a new album", "the symphony", "an acoustic version of the song", "the concert"],
        ["to a standing ovation", "in a small studio", "after years of silence"],
    ),
    "animals": (
        ["the dog", "a stray cat", "the elephants", "the wolves", "a small bird"],
        ["chased", "slept next to", "migrated across", "hunted", "built a nest near"],
        ["the garden fence", "the river", "the savanna", "the farmhouse"],
        ["at dawn", "every winter", "while the children watched"],
    ),
    "science": (
        ["the researchers", "the telescope", "a chemist", "the experiment", "the satellite"],
        ["discovered", "measured", "confirmed", "failed to detect", "mapped"],
        ["a distant galaxy", "the melting point", "a new protein", "ocean temperatures"],
        ["with unprecedented precision", "after months of testing", "in the lab"],
    ),
    "law": (
        ["the judge", "the lawyer", "the jury", "the court", "the prosecutor"],
        ["rejected", "appealed", "approved", "dismissed", "reviewed"],
        ["the contract", "the evidence", "the new privacy law", "the appeal"],
        ["on procedural grounds", "after a long hearing", "without comment"],
    ),
    "education": (
        ["the teacher", "the students", "the university", "the school board", "a tutor"],
        ["graded", "introduced", "studied", "postponed", "explained"],
        ["the final exams", "algebra", "a new reading program", "the history essay"],
        ["before the summer break", "in small groups", "using online tools"],
    ),
    "gardening": (
        ["the gardener", "my neighbour", "the tomatoes", "the roses", "the apple tree"],
        ["watered", "pruned", "planted", "harvested", "protected"],
        ["the vegetable beds", "the hedges", "tulip bulbs", "the young seedlings"],
        ["before the first frost", "in early spring", "with organic compost"],
    ),
    "cars": (
        ["the mechanic", "the electric car", "the truck", "the driver", "the engine"],
        ["repaired", "overheated on", "charged at", "skidded on", "replaced"],
        ["the brakes", "the highway", "the charging station", "the icy bridge"],
        ["before the long trip", "in heavy traffic", "for a reasonable price"],
    ),
    "programming": (
        ["the compiler", "the test suite", "the developer", "the API", "the script"],
        ["rejected", "refactored", "timed out on", "parsed", "leaked memory in"],
        ["the configuration file", "the legacy module", "the JSON payload", "the loop"],
        ["after the merge", "in production", "on every commit"],
    ),
}

_OPENERS = ["Yesterday", "According to the report,", "Surprisingly,", "Once again,", "Last week"]
_LINKS = ["because", "although", "while", "even though", "so"]
_FILLERS = [
    "and nobody seemed to know exactly why it happened",
    "which many people found frustrating after such a long wait",
    "and the local newspaper wrote a long article about it the next morning",
    "so the whole plan had to be reconsidered from the very beginning",
]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _clause(rng: random.Random, topic: str) -> str:
    subj, verbs, objs, _ = _TOPICS[topic]
    return f"{rng.choice(subj)} {rng.choice(verbs)} {rng.choice(objs)}"


def _sentence(rng: random.Random, topic: str, kind: int) -> str:
    subj, verbs, objs, details = _TOPICS[topic]
    other = rng.choice([t for t in _TOPICS if t != topic])
    if kind == 0:  # short: 4-8 tokens
        return _cap(f"{rng.choice(subj)} {rng.choice(verbs)} {rng.choice(objs)}.")
    if kind == 1:
        return _cap(f"{_clause(rng, topic)} {rng.choice(details)}.")
    if kind == 2:
        return f"{rng.choice(_OPENERS)} {_clause(rng, topic)} {rng.choice(details)}."
    if kind == 3:  # question
        return f"Why has {rng.choice(subj)} {rng.choice(verbs)} {rng.choice(objs)}?"
    if kind == 4:  # two clauses, same topic
        return _cap(f"{_clause(rng, topic)} {rng.choice(_LINKS)} {_clause(rng, topic)}.")
    if kind == 5:  # mixed topics: makes neighbours less obvious
        return _cap(f"{_clause(rng, topic)} {rng.choice(_LINKS)} {_clause(rng, other)}.")
    # long: 35-60 tokens
    return _cap(
        f"{rng.choice(_OPENERS).rstrip(',')}, {_clause(rng, topic)} {rng.choice(details)}, "
        f"{rng.choice(_LINKS)} {_clause(rng, topic)} {rng.choice(details)}, "
        f"{rng.choice(_FILLERS)}."
    )


def default_sentences(count: int = 360, seed: int = 20240601) -> list[str]:
    """``count`` unique, deterministic sentences over 15 topics and 7 shapes."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    seen: set[str] = set()
    out: list[str] = []
    i = 0
    while len(out) < count:
        text = _sentence(rng, topics[i % len(topics)], (i // len(topics)) % 7)
        i += 1
        if text not in seen:
            seen.add(text)
            out.append(text)
        if i > count * 50:
            raise DatasetError(f"cannot generate {count} unique sentences")
    return out


@dataclass(frozen=True)
class TextExample:
    text: str
    label: int | str | None = None


def load_jsonl(path: str | Path) -> list[TextExample]:
    """Read ``{"text": ..., "label"?: ...}`` lines.

    Raises:
        DatasetError: invalid UTF-8 or JSON, a missing/empty ``text``, labels on only
            some lines, or no examples at all.
    """
    data = Path(path).read_bytes()
    try:
        text_all = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A clear 4xx for the operator, never a traceback: name the line.
        raise DatasetError(f"{path}:{raw_line(data, exc.start)}: not valid UTF-8 text") from None
    examples: list[TextExample] = []
    for lineno, line in enumerate(text_all.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f'{path}:{lineno}: expected {{"text": "...", "label"?: ...}}')
        examples.append(TextExample(text=text, label=obj.get("label")))
    if not examples:
        raise DatasetError(f"{path}: dataset is empty")
    labelled = sum(e.label is not None for e in examples)
    if 0 < labelled < len(examples):
        raise DatasetError(
            f"{path}: {labelled} of {len(examples)} lines have a label; need all or none"
        )
    return examples


def raw_line(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


def load_npz(path: str | Path, input_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read named input tensors; all must share the batch dimension.

    Raises:
        DatasetError: empty archive, missing inputs, or mismatched batch sizes.
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if not arrays:
        raise DatasetError(f"{path}: no arrays")
    if input_names is not None:
        missing = [n for n in input_names if n not in arrays]
        if missing:
            raise DatasetError(f"{path}: missing inputs {missing}; has {sorted(arrays)}")
        arrays = {n: arrays[n] for n in input_names}
    batches = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
    if len(set(batches.values())) != 1 or 0 in batches.values():
        raise DatasetError(f"{path}: inputs must share a non-zero first dimension, got {batches}")
    return arrays


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def feeds(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in names}

    def all_feeds(self) -> dict[str, np.ndarray]:
        """All three token inputs; a fitted session picks and shapes what its graph takes."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }

    def row(self, i: int, trim: bool = True) -> Encoded:
        """One example as a batch of 1; ``trim`` drops its padding."""
        n = int(self.attention_mask[i].sum()) if trim else self.input_ids.shape[1]
        return Encoded(
            self.input_ids[i : i + 1, :n],
            self.attention_mask[i : i + 1, :n],
            self.token_type_ids[i : i + 1, :n],
        )


def load_tokenizer(path: str | Path):  # type: ignore[no-untyped-def]
    """Load a ``tokenizer.json`` (file or the folder holding it)."""
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise DatasetError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(p))


def encode(
    tokenizer_path: str | Path, texts: list[str], max_length: int = 128, pad_to: int | None = None
) -> Encoded:
    """Tokenize ``texts``; pad to the longest (or to ``pad_to``), truncate at ``max_length``.

    tokenizer.json files often enable fixed padding to 128; it is switched off
    here because padding changes both the cost and (for batch 1) the result.
    """
    if not texts:
        raise DatasetError("no texts to encode")
    tok = load_tokenizer(tokenizer_path)
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    encs = tok.encode_batch(texts)
    width = pad_to or max(len(e.ids) for e in encs)
    shape = (len(encs), width)
    ids = np.zeros(shape, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    for i, e in enumerate(encs):
        n = min(len(e.ids), width)
        ids[i, :n] = e.ids[:n]
        mask[i, :n] = e.attention_mask[:n]
        types[i, :n] = e.type_ids[:n]
    return Encoded(ids, mask, types)


def preview_dataset(path: str | Path, kind: str, rows: int = 10) -> dict[str, object]:
    """What a person checks before using a dataset: the first rows, text lengths or
    tensor shapes, and the label histogram (most common first).

    Raises:
        DatasetError: the file is not readable as `kind`.
    """
    if kind == "tensors-npz":
        arrays = load_npz(path)
        return {
            "tensors": [
                {"name": k, "shape": list(v.shape), "dtype": str(v.dtype)}
                for k, v in arrays.items()
            ]
        }
    examples = load_jsonl(path)
    lengths = sorted(len(e.text) for e in examples)
    labels: dict[str, int] = {}
    for example in examples:
        if example.label is not None:
            labels[str(example.label)] = labels.get(str(example.label), 0) + 1
    return {
        "first": [{"text": e.text[:300], "label": e.label} for e in examples[:rows]],
        "chars": {
            "min": lengths[0],
            "median": lengths[len(lengths) // 2],
            "max": lengths[-1],
        },
        "labels": dict(sorted(labels.items(), key=lambda kv: -kv[1])),
    }
