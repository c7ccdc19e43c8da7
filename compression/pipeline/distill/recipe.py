"""Recipe ``distill``: a Hugging Face encoder (the teacher) -> a smaller student folder.

Runs in the converter subprocess (``compression.pipeline.runner``). The output is a
Hugging Face folder (config.json, model.safetensors, the teacher's tokenizer and
sentence-transformers pooling files), so it can be exported, pruned or distilled again.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from compression.pipeline.distill.params import DistillError, DistillParams
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress

__all__ = ["distill", "torch_latency_ratio", "write_student"]

# Files a sentence-transformers folder uses to say how it pools and normalises.
POOLING_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def write_student(model: Any, teacher_dir: Path, out_dir: Path) -> Path:
    """Save ``model`` as safetensors with the teacher's tokenizer and pooling files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in (*TOKENIZER_FILES, *POOLING_FILES):
        source = teacher_dir / name
        if source.is_file():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out_dir / name)
    return out_dir


def torch_latency_ratio(teacher: Any, student: Any, rounds: int = 15) -> dict[str, float]:
    """Student/teacher forward latency at batch 1, sequence 64, one thread, interleaved so
    both see the same machine load."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vocab = int(teacher.config.vocab_size)
        ids = torch.randint(5, vocab, (1, 64))
        feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        times: dict[str, list[float]] = {"teacher": [], "student": []}
        with torch.no_grad():
            for model in (teacher, student):
                model(**feed)  # warm-up
            for _ in range(rounds):
                for name, model in (("teacher", teacher), ("student", student)):
                    t0 = time.perf_counter()
                    model(**feed)
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    t, s = statistics.median(times["teacher"]), statistics.median(times["student"])
    return {
        "teacher_ms": round(t * 1e3, 3),
        "student_ms": round(s * 1e3, 3),
        "ratio": round(s / t, 4),
    }


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def distill(
    model_dir: str,
    output_dir: str,
    params: DistillParams | None = None,
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
    eval_path: str | None = None,
    checkpoint_dir: str | None = None,
) -> RecipeResult:
    """Distil the teacher in ``model_dir`` into a student written to ``output_dir``.

    ``calibration_path`` is the operator's unlabeled (or labelled) JSONL text; without it
    the built-in corpus is used. ``eval_path`` (JSONL) is the held-out set; without it a
    hash-selected ~10% of the training texts is held out.

    Raises:
        DistillError: not an encoder, a student not smaller than the teacher, unreadable
            or too little data.
    """
    import torch

    from compression.pipeline.distill.data import training_texts

    params = params or DistillParams()
    from compression.pipeline.distill.student import build_student, load_teacher
    from compression.pipeline.distill.train import Tokens, Trainer, checkpoint_lock

    torch.set_num_threads(params.threads)
    progress(0.01, "loading", "loading the teacher")
    teacher = load_teacher(model_dir, params)
    tokenizer = Path(tokenizer_path) if tokenizer_path else Path(model_dir) / "tokenizer.json"
    if not tokenizer.is_file():
        raise DistillError("the teacher has no tokenizer.json; distillation needs its tokenizer")
    progress(0.02, "data", "reading the training texts")
    data = training_texts(
        calibration_path, eval_path, limit=params.max_train_texts, held_out=params.held_out
    )
    if teacher.task == "classifier" and data.labels is not None:
        classes = int(teacher.model.config.num_labels)
        if max(data.labels) >= classes:
            raise DistillError(f"the labels have more than the teacher's {classes} classes")
    torch.manual_seed(params.seed)
    student, kept, projection = build_student(teacher, params)
    log = [
        f"teacher: {teacher.config.get('model_type')} {len(teacher.layers)} layers, "
        f"{count_parameters(teacher.model):,} parameters; task {teacher.task}",
        f"student: layers {kept} of the teacher, hidden "
        f"{student.config.hidden_size}, {count_parameters(student):,} parameters",
        f"data: {len(data.train)} training texts ({data.source}), {len(data.held_out)} held out",
    ]
    for line in log:
        progress(0.03, "preparing", line)
    tokens = Tokens(tokenizer, params.max_length)
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    trainer = Trainer(
        teacher=teacher.model,
        student=student,
        task=teacher.task,
        projection=projection,
        data=data,
        params=params,
        tokens=tokens,
        checkpoint_dir=folder,
        progress=lambda f, stage, msg: progress(0.05 + 0.85 * f, stage, msg),
        layer_map=kept,
    )
    if folder is not None:
        with checkpoint_lock(folder):
            outcome = trainer.run()
    else:
        outcome = trainer.run()
    log.append(
        f"trained {outcome.steps}/{outcome.total_steps} steps in {outcome.seconds:.0f} s"
        + (f" (resumed at step {outcome.resumed_from})" if outcome.resumed_from else "")
        + (", stopped early" if outcome.stopped_early else "")
        + f"; best held-out score {outcome.best_score:.4f} at step {outcome.best_step}"
    )
    progress(0.92, "saving", "writing the student")
    out = write_student(student, Path(model_dir), Path(output_dir))
    if projection is not None:
        from safetensors.torch import save_file

        # The student's embeddings live in P·(teacher space); keep P to compare them.
        save_file(
            {"projection": projection.contiguous()}, str(out / "teacher_projection.safetensors")
        )
    progress(0.95, "timing", "student vs teacher latency (PyTorch, batch 1, seq 64)")
    latency = torch_latency_ratio(teacher.model, student)
    metrics: dict[str, Any] = {
        "teacher_parameters": count_parameters(teacher.model),
        "student_parameters": count_parameters(student),
        "layers_kept": kept,
        "hidden_size": int(student.config.hidden_size),
        "training": {
            "texts": len(data.train),
            "source": data.source,
            "held_out_texts": len(data.held_out),
            "steps": outcome.steps,
            "planned_steps": outcome.total_steps,
            "best_step": outcome.best_step,
            "stopped_early": outcome.stopped_early,
            "resumed_from_step": outcome.resumed_from,
            "seconds": round(outcome.seconds, 1),
            "history": outcome.history[-50:],
        },
        "heldout_fidelity": outcome.heldout,
        "torch_latency": latency,
    }
    progress(1.0, "done", f"held-out {outcome.heldout}")
    return RecipeResult(
        output_path=str(out),
        recipe="distill",
        params=dataclasses.asdict(params),
        log=log,
        metrics=metrics,
        pipeline={"task": teacher.task},
    )
