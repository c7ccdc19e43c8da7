"""Recipes ``prune-heads`` and ``prune-ffn``: structured pruning of a BERT-style encoder by
measured importance, then a short recovery fine-tune towards the unpruned model on the
same texts (the distillation loop, so checkpoints and early stopping come with it).

``prune-ffn`` keeps the same number of neurons in every layer, so the result is a standard
Hugging Face folder with a smaller ``intermediate_size``. Heads pruned unevenly across
layers cannot be described by a standard config, so ``prune-heads`` writes the pruned
model straight to ONNX (legacy exporter, like ``export-onnx``).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from compression.pipeline.distill.params import DistillError, DistillParams
from compression.pipeline.distill.recipe import count_parameters
from compression.pipeline.prune.params import PruneFfnParams, PruneHeadsParams, recovery_params
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress

__all__ = ["prune_ffn_recipe", "prune_heads_recipe"]


def _prepare(
    model_dir: str,
    params: PruneHeadsParams | PruneFfnParams,
    calibration_path: str | None,
    eval_path: str | None,
    tokenizer_path: str | None,
    progress: ProgressFn,
) -> tuple[Any, Any, Any, Any]:
    import torch

    from compression.pipeline.distill.data import training_texts
    from compression.pipeline.distill.student import load_teacher
    from compression.pipeline.distill.train import Tokens

    torch.set_num_threads(params.threads)
    progress(0.01, "loading", "loading the model")
    # layers=1 only satisfies the distill checks (encoder, BERT-style); no layer is dropped.
    teacher = load_teacher(model_dir, DistillParams(layers=1))
    tokenizer = Path(tokenizer_path) if tokenizer_path else Path(model_dir) / "tokenizer.json"
    if not tokenizer.is_file():
        raise DistillError("the model has no tokenizer.json; pruning measures on text")
    data = training_texts(
        calibration_path,
        eval_path,
        limit=max(params.recovery_texts, params.importance_texts),
        held_out=params.held_out,
        min_texts=params.importance_texts,
    )
    return teacher, data, Tokens(tokenizer, params.max_length), torch


def _recover(
    teacher: Any,
    student: Any,
    data: Any,
    tokens: Any,
    params: PruneHeadsParams | PruneFfnParams,
    checkpoint_dir: str | None,
    progress: ProgressFn,
) -> dict[str, Any]:
    from compression.pipeline.distill.train import Trainer, checkpoint_lock

    for p in getattr(student, "base_model", student).embeddings.parameters():
        p.requires_grad_(False)
    train = dataclasses.replace(data, train=data.train[: max(params.recovery_texts, 1)])
    trainer = Trainer(
        teacher=teacher.model,
        student=student,
        task=teacher.task,
        projection=None,
        data=train,
        params=recovery_params(params),
        tokens=tokens,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
        progress=lambda f, stage, msg: progress(0.3 + 0.55 * f, stage, msg),
    )
    before = trainer.measure()
    if params.recovery_texts == 0:
        return {"before_recovery": before, "after_recovery": before, "steps": 0}
    if checkpoint_dir:
        with checkpoint_lock(Path(checkpoint_dir)):
            outcome = trainer.run()
    else:
        outcome = trainer.run()
    return {
        "before_recovery": {k: round(v, 5) for k, v in before.items() if k != "score"},
        "after_recovery": outcome.heldout,
        "steps": outcome.steps,
        "resumed_from_step": outcome.resumed_from,
        "seconds": round(outcome.seconds, 1),
    }


def prune_heads_recipe(
    model_dir: str,
    output_dir: str,
    params: PruneHeadsParams | None = None,
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
    eval_path: str | None = None,
    checkpoint_dir: str | None = None,
) -> RecipeResult:
    """Remove the least important attention heads, recover, export to ONNX.

    Raises:
        DistillError: not a BERT-style encoder, or unreadable/too little text.
    """
    from compression.pipeline.prune.surgery import head_importance, plan_heads, prune_heads

    params = params or PruneHeadsParams()
    teacher, data, tokens, _ = _prepare(
        model_dir, params, calibration_path, eval_path, tokenizer_path, progress
    )
    progress(0.05, "importance", "measuring each head's importance by ablation")
    importance = head_importance(
        teacher.model, teacher.task, tokens, data.train[: params.importance_texts]
    )
    plan = plan_heads(importance, params.fraction)
    student = copy.deepcopy(teacher.model)
    for p in student.parameters():
        p.requires_grad_(True)
    prune_heads(student, plan)
    removed = sum(len(h) for h in plan.values())
    total = sum(len(r) for r in importance)
    progress(0.3, "pruned", f"removed {removed} of {total} heads: {plan}")
    recovery = _recover(teacher, student, data, tokens, params, checkpoint_dir, progress)
    progress(0.88, "export", "exporting the pruned model to ONNX")
    out = _export(student, teacher, Path(model_dir), Path(output_dir), params.opset)
    from compression.pipeline.distill.recipe import torch_latency_ratio

    metrics = {
        "heads_removed": removed,
        "heads_total": total,
        "plan": {str(k): v for k, v in plan.items()},
        "importance": [[round(s, 6) for s in row] for row in importance],
        "parameters_before": count_parameters(teacher.model),
        "parameters_after": count_parameters(student),
        "recovery": recovery,
        "heldout_fidelity": recovery["after_recovery"],
        "torch_latency": torch_latency_ratio(teacher.model, student),
    }
    from compression.pipeline.export_onnx import read_pipeline_spec

    return RecipeResult(
        output_path=str(out),
        recipe="prune-heads",
        params=dataclasses.asdict(params),
        log=[f"removed heads {plan}", f"recovery: {recovery}"],
        metrics=metrics,
        pipeline=read_pipeline_spec(Path(model_dir), teacher.task)
        | {"inputs": _input_names(teacher)},
    )


def prune_ffn_recipe(
    model_dir: str,
    output_dir: str,
    params: PruneFfnParams | None = None,
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
    eval_path: str | None = None,
    checkpoint_dir: str | None = None,
) -> RecipeResult:
    """Remove the least important FFN neurons (the same count per layer), recover.

    Raises:
        DistillError: not a BERT-style encoder, or unreadable/too little text.
    """
    from compression.pipeline.distill.recipe import torch_latency_ratio, write_student
    from compression.pipeline.prune.surgery import neuron_importance, prune_ffn

    params = params or PruneFfnParams()
    teacher, data, tokens, _ = _prepare(
        model_dir, params, calibration_path, eval_path, tokenizer_path, progress
    )
    progress(0.05, "importance", "measuring neuron activations")
    importance = neuron_importance(teacher.model, tokens, data.train[: params.importance_texts])
    student = copy.deepcopy(teacher.model)
    for p in student.parameters():
        p.requires_grad_(True)
    before = int(student.config.intermediate_size)
    kept = prune_ffn(student, importance, params.fraction)
    progress(0.3, "pruned", f"kept {kept} of {before} FFN neurons per layer")
    recovery = _recover(teacher, student, data, tokens, params, checkpoint_dir, progress)
    out = write_student(student, Path(model_dir), Path(output_dir))
    return RecipeResult(
        output_path=str(out),
        recipe="prune-ffn",
        params=dataclasses.asdict(params),
        log=[f"kept {kept} of {before} FFN neurons per layer", f"recovery: {recovery}"],
        metrics={
            "ffn_width_before": before,
            "ffn_width_after": kept,
            "parameters_before": count_parameters(teacher.model),
            "parameters_after": count_parameters(student),
            "student_parameters": count_parameters(student),
            "recovery": recovery,
            "heldout_fidelity": recovery["after_recovery"],
            "torch_latency": torch_latency_ratio(teacher.model, student),
        },
        pipeline={"task": teacher.task},
    )


def _input_names(teacher: Any) -> list[str]:
    type_vocab = int(teacher.config.get("type_vocab_size", 0) or 0)
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if type_vocab else [])


def _export(student: Any, teacher: Any, src: Path, out_dir: Path, opset: int) -> Path:
    """The pruned model as ONNX, traced the way ``export-onnx`` traces (legacy exporter)."""
    import onnx
    import torch

    names = _input_names(teacher)
    output = "logits" if teacher.task == "classifier" else "last_hidden_state"

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, args, strict=True)))[0]

    sample = tuple(
        torch.ones((1, 16), dtype=torch.int64)
        if n == "attention_mask"
        else torch.zeros((1, 16), dtype=torch.int64)
        if n == "token_type_ids"
        else torch.randint(5, int(student.config.vocab_size), (1, 16))
        for n in names
    )
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    dyn[output] = {0: "batch"} if teacher.task == "classifier" else {0: "batch", 1: "sequence"}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    student.eval()
    with torch.no_grad():
        torch.onnx.export(
            _Wrapper(student),
            sample,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, out_dir / name)
    return path
