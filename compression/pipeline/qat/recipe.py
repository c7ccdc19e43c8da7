"""Recipe ``onnx-int8-qat``: quantization-aware fine-tuning, then int8.

Post-training int8 of a sentence encoder leaves a cosine error of about 0.001, enough
to swap nearest neighbours that are closer than that (bench/reports/int8_ceiling.md).
This recipe fine-tunes a copy of the Hugging Face model while simulating the int8
arithmetic of one ``onnx-int8-auto`` candidate, so its weights learn to absorb the
rounding; then exports it, quantizes it with that candidate and measures the int8 model
against the *original* fp32 model (never against the fine-tuned copy), on the same
selection and held-out texts as ``onnx-int8-auto``.

Runs in the converter subprocess (``compression.pipeline.runner``).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from compression.pipeline.qat.params import QatError, QatParams
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress

__all__ = ["check_candidate", "quantize_int8_qat"]

MIN_TRAIN_TEXTS = 64


def check_candidate(name: str) -> Any:
    """The named onnx-int8-auto candidate, if training can simulate it.

    Raises:
        QatError: unknown, or not simulated.
    """
    from compression.pipeline.auto_int8 import DEFAULT_CANDIDATES

    found = next((c for c in DEFAULT_CANDIDATES if c.name == name), None)
    if found is None:
        raise QatError(
            f"unknown candidate {name!r}; known: {sorted(c.name for c in DEFAULT_CANDIDATES)}"
        )
    if found.nbits8_top or found.weight_type != "int8" or found.keep_fp32_nodes:
        raise QatError(
            f"candidate {name!r} is not simulated in training (MatMulNBits, uint8 weights "
            "or nodes kept by name); choose a smoothquant or dynamic-per-channel candidate"
        )
    return found


def _auto_params(params: QatParams, candidate: str) -> Any:
    from compression.pipeline.auto_int8 import AutoInt8Params

    return AutoInt8Params(
        candidates=(candidate,),
        require_target=params.require_target,
        calibration_samples=params.calibration_samples,
        heldout_samples=params.heldout_samples,
        latency_rounds=params.latency_rounds,
        threads=1,
    )


def _training_texts(
    calibration_path: str | None, params: QatParams, excluded: set[str]
) -> tuple[list[str], str]:
    """The operator's texts when given, else the built-in corpus's training split;
    never a text the int8 model is measured on."""
    from compression.pipeline.corpus import build_corpus
    from compression.pipeline.textdata import DatasetError, load_jsonl

    if calibration_path:
        try:
            texts = [e.text for e in load_jsonl(calibration_path)]
        except (DatasetError, UnicodeDecodeError) as exc:
            raise QatError(f"the training dataset cannot be read: {exc}") from None
        source = "training dataset"
    else:
        corpus = build_corpus(limit=params.max_train_texts, held_out_limit=0)
        texts, source = corpus.train, f"built-in corpus ({corpus.digest[:12]})"
    texts = [t for t in dict.fromkeys(texts) if t not in excluded][: params.max_train_texts]
    if len(texts) < MIN_TRAIN_TEXTS:
        raise QatError(
            f"{len(texts)} training texts once the evaluation texts are removed; "
            f"fine-tuning needs at least {MIN_TRAIN_TEXTS}"
        )
    return texts, source


def _load(model_dir: Path) -> tuple[Any, Any]:
    """Teacher and student (two copies of the model), embedding encoders only."""
    from compression.pipeline.distill.params import DistillError, DistillParams
    from compression.pipeline.distill.student import load_teacher

    try:
        teacher = load_teacher(model_dir, DistillParams(layers=1))
    except DistillError as exc:
        raise QatError(str(exc)) from None
    if teacher.task != "embedding":
        raise QatError(
            "quantization-aware fine-tuning is built for sentence-embedding encoders; "
            "for a classifier use onnx-int8-auto"
        )
    # A copy, not a second load: weights the folder lacks would be initialised twice,
    # differently.
    student = copy.deepcopy(teacher.model)
    student.requires_grad_(True)  # the teacher is loaded frozen
    return teacher.model.eval(), student.eval()


def quantize_int8_qat(
    model_dir: str,
    output_dir: str,
    params: QatParams | None = None,
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
    eval_path: str | None = None,
    checkpoint_dir: str | None = None,
) -> RecipeResult:
    """Fine-tune ``model_dir`` under simulated int8, quantize it, measure it against the
    original. ``calibration_path`` (JSONL) is the training text (default: the built-in
    corpus); ``eval_path`` joins the selection and held-out texts as in onnx-int8-auto.
    ``checkpoint_dir`` is accepted for the training-recipe interface; a run that dies is
    started again from the beginning (it takes minutes, not hours).

    Raises:
        QatError: not a sentence encoder, an unsimulated candidate, too little text.
        FidelityTargetError: the int8 model misses the target (``require_target``).
    """
    import torch

    from compression.pipeline.auto_int8 import quantize_int8_auto
    from compression.pipeline.auto_int8.evalset import plan_texts
    from compression.pipeline.distill.recipe import write_student
    from compression.pipeline.export_onnx import export_onnx
    from compression.pipeline.qat.fakequant import plan_linears
    from compression.pipeline.qat.train import (
        batch_feed,
        fine_tune,
        simulated_fidelity,
        text_embeddings,
    )

    params = params or QatParams()
    candidate = check_candidate(params.candidate)
    source = Path(model_dir)
    tokenizer = Path(tokenizer_path) if tokenizer_path else source / "tokenizer.json"
    if not tokenizer.is_file():
        raise QatError("the model has no tokenizer.json; fine-tuning needs its tokenizer")
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    progress(0.01, "loading", "loading the model")
    teacher, student = _load(source)
    positions = int(getattr(student.config, "max_position_embeddings", params.max_length))
    params = dataclasses.replace(params, max_length=min(params.max_length, positions))
    auto = _auto_params(params, candidate.name)
    plan = plan_texts(auto, eval_path, calibration_path)
    measured = set(plan.selection) | set(plan.heldout)
    texts, text_source = _training_texts(calibration_path, params, measured)
    progress(0.03, "calibrating", f"activation ranges on {len(plan.calibration)} texts")
    plans = plan_linears(
        student,
        (batch_feed(tokenizer, [t], params.max_length) for t in plan.calibration),
        candidate,
    )
    # A quick look at what training changed, on held-out texts (the real figures come
    # from the exported int8 model below).
    check = plan.heldout[:100]
    simulate = (plans, candidate)
    reference = text_embeddings(teacher, check, tokenizer, params.max_length)
    before = simulated_fidelity(student, reference, simulate, check, tokenizer, params.max_length)
    outcome = fine_tune(
        teacher,
        student,
        plans,
        candidate,
        texts,
        tokenizer,
        params,
        lambda f, stage, msg: progress(0.05 + 0.6 * f, stage, msg),
    )
    after = simulated_fidelity(student, reference, simulate, check, tokenizer, params.max_length)
    log = [
        f"fine-tuned {outcome.steps} steps in {outcome.seconds:.0f} s on {len(texts)} texts "
        f"({text_source}), simulating {candidate.name}",
        f"simulated int8 on {len(check)} held-out texts: cosine {before['cosine_mean']:.5f} "
        f"-> {after['cosine_mean']:.5f}, NN {before['nn_agreement']:.3f} -> "
        f"{after['nn_agreement']:.3f}",
    ]
    with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
        work = Path(tmp)
        tuned = write_student(student, source, work / "tuned")
        progress(0.68, "exporting", "the original and the fine-tuned model to ONNX")
        original_onnx = export_onnx(str(source), str(work / "original")).output_path
        tuned_onnx = export_onnx(str(tuned), str(work / "tuned-onnx")).output_path
        result = quantize_int8_auto(
            tuned_onnx,
            output_dir,
            auto,
            lambda f, stage, msg: progress(0.7 + 0.3 * f, stage, msg),
            tokenizer_path=str(tokenizer),
            calibration_path=calibration_path,
            eval_path=eval_path,
            reference_path=original_onnx,
            # The grid the copy was fine-tuned on: statistics of the original.
            calibration_model=original_onnx,
        )
    metrics: dict[str, Any] = {
        **result.metrics,
        "measured_against": "the original fp32 model (exported to ONNX), not the fine-tuned copy",
        "fine_tuning": {
            "steps": outcome.steps,
            "seconds": round(outcome.seconds, 1),
            "texts": len(texts),
            "source": text_source,
            "simulated_before": before,
            "simulated_after": after,
            "history": outcome.history[-40:],
        },
    }
    return RecipeResult(
        output_path=result.output_path,
        recipe="onnx-int8-qat",
        params=dataclasses.asdict(params),
        log=log + result.log,
        metrics=metrics,
        pipeline=result.pipeline,
    )
