"""Fidelity math, built-in text data, dataset loading and golden sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.evaluate import (
    ShapeMismatchError,
    classifier_fidelity,
    embedding_fidelity,
    l2_normalize,
    mean_pool,
    nearest_neighbours,
    tensor_fidelity,
)
from compression.pipeline.golden import (
    GoldenError,
    build_golden,
    check_golden,
    golden_tolerance,
    load_golden,
)
from compression.pipeline.textdata import (
    DatasetError,
    default_sentences,
    encode,
    load_jsonl,
    load_npz,
)
from tests.fixtures.tiny_models import build_tiny_hf_dir


def _embeddings(n: int = 50, d: int = 16, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, d)))


def test_it_scores_identical_embeddings_as_perfect() -> None:
    e = _embeddings()
    f = embedding_fidelity(e, e.copy())
    assert f.cosine_mean == pytest.approx(1.0) and f.cosine_min == pytest.approx(1.0)
    assert f.nn_agreement == 1.0 and f.count == 50


def test_it_ignores_vector_length_in_cosine() -> None:
    e = _embeddings()
    assert embedding_fidelity(e, e * 3.0).cosine_mean == pytest.approx(1.0)


def test_it_reports_the_cosine_of_a_known_rotation() -> None:
    e = np.zeros((4, 2))
    e[:, 0] = 1.0
    angle = np.pi / 3
    rotated = np.tile([np.cos(angle), np.sin(angle)], (4, 1))
    f = embedding_fidelity(e, rotated)
    assert f.cosine_mean == pytest.approx(0.5) and f.cosine_min == pytest.approx(0.5)


def test_it_counts_nearest_neighbour_disagreements() -> None:
    # Rows 0 and 1 are each other's nearest neighbour, 2 and 3 likewise.
    ref = l2_normalize(np.array([[1.0, 0.1, 0], [1.0, 0.2, 0], [0, 1.0, 0.1], [0, 1.0, 0.2]]))
    assert list(nearest_neighbours(ref)) == [1, 0, 3, 2]
    cand = ref.copy()
    cand[0] = l2_normalize(np.array([0.1, 1.0, 0.15]))  # row 0 now sits next to 2/3
    f = embedding_fidelity(ref, cand)
    assert int(nearest_neighbours(cand)[0]) in (2, 3)
    assert 0 < f.nn_agreement < 1.0


def test_it_tells_near_tie_flips_from_clear_ones() -> None:
    # Row 0's two nearest neighbours (1 and 2) are almost equally close: a near-tie. Rows
    # 3 and 4 are each other's clear neighbour.
    ref = l2_normalize(
        np.array(
            [[1.0, 0.0, 0.0], [1.0, 0.3, 0.0], [1.0, -0.3001, 0.0], [0, 0, 1.0], [0, 0.1, 1.0]]
        )
    )
    assert int(nearest_neighbours(ref)[0]) == 1
    tie_flip = ref.copy()
    tie_flip[0] = l2_normalize(np.array([1.0, -0.001, 0.0]))  # now just nearer to row 2
    f = embedding_fidelity(ref, tie_flip)
    assert f.nn_agreement == pytest.approx(4 / 5) and f.near_ties == 1
    assert f.nn_agreement_clear == pytest.approx(1.0)  # the only flip was a near-tie
    clear_flip = ref.copy()
    clear_flip[3] = l2_normalize(np.array([1.0, 0.29, 0.0]))  # row 3 leaves row 4
    g = embedding_fidelity(ref, clear_flip)
    assert g.nn_agreement_clear is not None and g.nn_agreement_clear < 1.0


def test_it_rejects_embeddings_it_cannot_compare() -> None:
    with pytest.raises(ShapeMismatchError):
        embedding_fidelity(_embeddings(10), _embeddings(9))
    with pytest.raises(ValueError, match="n>=2"):
        embedding_fidelity(_embeddings(1), _embeddings(1))


def test_it_mean_pools_only_unmasked_tokens() -> None:
    hidden = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [[2.0, 2.0]])


def test_it_measures_classifier_agreement_and_accuracy_drop() -> None:
    ref = np.array([[2.0, 0], [0, 2.0], [2.0, 0], [0, 2.0]])
    cand = np.array([[2.0, 0], [0, 2.0], [0, 2.0], [0, 2.0]])
    f = classifier_fidelity(ref, cand, labels=[0, 1, 0, 1])
    assert f.agreement == 0.75
    assert f.reference_accuracy == 1.0 and f.candidate_accuracy == 0.75
    assert f.accuracy_drop_points == pytest.approx(25.0)
    assert classifier_fidelity(ref, cand).accuracy_drop_points is None
    with pytest.raises(ShapeMismatchError, match="labels"):
        classifier_fidelity(ref, cand, labels=[0, 1])


def test_it_measures_tensor_errors() -> None:
    ref = np.zeros((2, 3))
    cand = np.array([[0.0, 0.5, 0], [0, 0, -1.0]])
    f = tensor_fidelity(ref, cand)
    assert f.max_abs_error == 1.0 and f.mean_abs_error == pytest.approx(0.25)


def test_it_generates_the_same_varied_sentences_every_time() -> None:
    a, b = default_sentences(), default_sentences()
    assert a == b and len(a) >= 300 and len(set(a)) == len(a)
    words = [len(s.split()) for s in a]
    assert min(words) >= 4 and max(words) <= 60
    assert max(words) >= 30, "some long sentences"
    assert any(s.endswith("?") for s in a), "some questions"
    assert default_sentences(50, seed=1) != default_sentences(50, seed=2)


def test_it_tokenizes_without_the_tokenizer_default_padding(tmp_path: Path) -> None:
    hf = build_tiny_hf_dir(tmp_path / "hf")
    enc = encode(hf, ["the tiny model runs", "fast"])
    assert enc.input_ids.shape[0] == 2
    assert enc.attention_mask[1].sum() < enc.attention_mask[0].sum()
    assert enc.row(1).input_ids.shape == (1, int(enc.attention_mask[1].sum()))
    padded = encode(hf, ["fast"], pad_to=16)
    assert padded.input_ids.shape == (1, 16)
    with pytest.raises(DatasetError):
        encode(hf, [])


def test_it_loads_jsonl_with_and_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a b", "label": 1}\n\n{"text": "c", "label": 0}\n')
    assert [e.label for e in load_jsonl(path)] == [1, 0]
    path.write_text('{"text": "a b"}\n')
    assert load_jsonl(path)[0].label is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("not json\n", "invalid JSON"),
        ('{"label": 1}\n', "expected"),
        ('{"text": "a", "label": 1}\n{"text": "b"}\n', "need all or none"),
    ],
)
def test_it_rejects_bad_jsonl(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_jsonl(path)


def test_it_rejects_npz_with_mismatched_batches(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(DatasetError, match="first dimension"):
        load_npz(path)
    np.savez(path, a=np.zeros((3, 2)))
    assert load_npz(path)["a"].shape == (3, 2)


def _golden_case(n: int = 4) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    feeds = [
        {"input_ids": rng.integers(0, 50, (1, 6)), "attention_mask": np.ones((1, 6), np.int64)}
        for _ in range(n)
    ]
    refs = [rng.normal(size=(1, 6, 8)).astype(np.float32) for _ in range(n)]
    return feeds, refs


def test_it_writes_and_checks_an_embedding_golden_set(tmp_path: Path) -> None:
    feeds, refs = _golden_case()
    cands = [r + 0.01 for r in refs]
    tol = golden_tolerance("text-embedding", refs, cands, feeds)
    assert 0.9 < tol["min_cosine"] < 1.0
    digest = build_golden(tmp_path / "g.npz", feeds, refs, "text-embedding", tol)
    golden = load_golden(tmp_path / "g.npz")
    assert golden.sha256 == digest and len(golden.feeds) == 4
    ok = check_golden(cands, golden)
    assert ok.passed and ok.agreement == 1.0 and ok.metric == "cosine"
    broken = [-r for r in refs]
    bad = check_golden(broken, golden)
    assert not bad.passed and bad.failures == [0, 1, 2, 3]


def test_it_fails_golden_checks_on_nan_and_wrong_shapes(tmp_path: Path) -> None:
    feeds, refs = _golden_case(2)
    build_golden(tmp_path / "g.npz", feeds, refs, "tensor", {"max_abs_error": 0.1})
    golden = load_golden(tmp_path / "g.npz")
    nan = refs[0].copy()
    nan[0, 0, 0] = np.nan
    result = check_golden([nan, refs[1][:, :3]], golden)
    assert not result.passed and result.failures == [0, 1]
    with pytest.raises(GoldenError, match="outputs"):
        check_golden([refs[0]], golden)


def test_it_refuses_malformed_golden_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "g.npz", x=np.zeros(2))
    with pytest.raises(GoldenError, match="meta"):
        load_golden(tmp_path / "g.npz")
    meta = json.dumps({"format": 1, "count": 2, "task": "t", "tolerance": {}}).encode()
    np.savez(tmp_path / "h.npz", meta=np.frombuffer(meta, np.uint8))
    with pytest.raises(GoldenError, match="incomplete"):
        load_golden(tmp_path / "h.npz")
    with pytest.raises(GoldenError, match="matching"):
        build_golden(tmp_path / "e.npz", [], [], "t", {"max_abs_error": 1.0})
