"""Run compression recipes, in-process or in a fresh subprocess.

Heavy converters (torch export, onnxruntime quantization) can crash or exhaust
memory; running them in a child process turns that into a failed job instead of
a dead Celery worker.  The child is ``python -m compression.pipeline.runner``:
it reads ``{"func": name, "kwargs": {...}}`` as JSON on stdin and writes one
JSON object on the last line of stdout.  Progress lines go to stdout too, as
``{"progress": ...}`` objects, so a parent may stream them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "RECIPES",
    "ConverterCrashError",
    "ConverterTimeoutError",
    "ProgressFn",
    "RecipeResult",
    "no_progress",
    "resolve",
    "run_in_subprocess",
]


class ProgressFn(Protocol):
    def __call__(self, fraction: float, stage: str, message: str) -> None: ...


def no_progress(fraction: float, stage: str, message: str) -> None:
    """Default progress callback: ignore."""


@dataclass
class RecipeResult:
    """What every recipe returns.

    ``pipeline`` is the I/O and pre/post-processing spec that travels with the
    model (e.g. ``{"pooling": "mean", "normalize": true}``); ``metrics`` holds
    whatever the recipe measured itself (fidelity, candidates tried).
    """

    output_path: str
    recipe: str
    params: dict[str, Any]
    log: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Recipe name -> "module:function[:ParamsClass]". Strings, so importing the
# runner does not import torch or onnxruntime.
RECIPES: dict[str, str] = {
    "export-onnx": "compression.pipeline.export_onnx:export_onnx:ExportParams",
    "onnx-int8-dynamic": "compression.pipeline.quantize:quantize_int8_dynamic:DynamicInt8Params",
    "onnx-int8-static": "compression.pipeline.quantize:quantize_int8_static:StaticInt8Params",
    "onnx-fp16": "compression.pipeline.quantize:convert_fp16:Fp16Params",
    "onnx-int8-auto": "compression.pipeline.auto_int8:quantize_int8_auto:AutoInt8Params",
    "onnx-int8-qat": "compression.pipeline.qat.recipe:quantize_int8_qat:QatParams",
    "tflite": "compression.pipeline.tflite_export:export_tflite:TfliteParams",
    "tflm": "compression.pipeline.tflm.recipe:convert_tflm:TflmParams",
    "as-is": "compression.pipeline.as_is:keep_as_is:AsIsParams",
    "sensor-transformer": "compression.pipeline.sensor.recipe:train_sensor:SensorParams",
    "distill": "compression.pipeline.distill.recipe:distill:DistillParams",
    "prune-heads": "compression.pipeline.prune.recipe:prune_heads_recipe:PruneHeadsParams",
    "prune-ffn": "compression.pipeline.prune.recipe:prune_ffn_recipe:PruneFfnParams",
}

# Functions callable through the subprocess runner that are not recipes.
_EXTRA_FUNCS: dict[str, str] = {
    "benchmark": "compression.pipeline.benchmark:_benchmark_in_process",
    "crash-for-test": "compression.pipeline.runner:_crash_for_test",
    "assess": "compression.pipeline.assess:assess",
    "assess-tflm": "compression.pipeline.tflm.assess:assess_tflm",
    "compare-latency": "compression.pipeline.assess:compare_latency_json",
    "probe-outputs": "compression.pipeline.outputs:probe_roles",
    "assess-student": "compression.pipeline.distill.assess:assess_student",
    "fidelity-to-origin": "compression.pipeline.origin:fidelity_to_origin",
}


class ConverterCrashError(RuntimeError):
    """The converter subprocess died or reported an exception.

    ``stderr_tail`` holds the last lines the converter wrote to stderr, which is
    usually the only useful clue after a native crash or an OOM kill.
    """

    def __init__(self, message: str, stderr_tail: str = "", returncode: int | None = None):
        super().__init__(message)
        self.stderr_tail = stderr_tail
        self.returncode = returncode


class ConverterTimeoutError(ConverterCrashError):
    """The converter subprocess ran past its time limit and was killed."""


def resolve(name: str) -> tuple[Callable[..., Any], type | None]:
    """Return (function, params dataclass or None) for a recipe or helper name."""
    spec = RECIPES.get(name) or _EXTRA_FUNCS.get(name)
    if spec is None:
        raise KeyError(f"unknown recipe or function: {name!r}")
    parts = spec.split(":")
    module = importlib.import_module(parts[0])
    func = getattr(module, parts[1])
    params_cls = getattr(module, parts[2]) if len(parts) > 2 else None
    return func, params_cls


def _call(name: str, kwargs: Mapping[str, Any], progress: ProgressFn) -> Any:
    func, params_cls = resolve(name)
    kw = dict(kwargs)
    if params_cls is not None:
        kw["params"] = params_cls(**kw.get("params", {}))
        kw["progress"] = progress
    result = func(**kw)
    # Under `python -m` this module is __main__, so the recipe's RecipeResult class is a
    # different object than ours: test for the method, not the class.
    return result.to_dict() if hasattr(result, "to_dict") else result


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _limit_memory(memory_limit: int | None) -> Callable[[], None] | None:
    if not memory_limit:
        return None

    def apply() -> None:
        # RLIMIT_AS makes allocations fail inside the child (MemoryError or a
        # native abort) instead of letting the OOM killer pick a victim.
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return apply


def run_in_subprocess(
    func_name: str,
    kwargs: Mapping[str, Any],
    timeout: float = 3600.0,
    memory_limit: int | None = None,
    progress: ProgressFn = no_progress,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Run ``func_name(**kwargs)`` in ``python -m compression.pipeline.runner``.

    ``kwargs`` must be JSON-serialisable; a recipe's ``params`` is passed as a
    dict and rebuilt into its dataclass in the child.  Progress lines are
    relayed to ``progress`` as they arrive; if ``progress`` raises (e.g. the
    job was cancelled) the child is killed and the exception propagates.
    Returns the function's result (a recipe's ``RecipeResult`` as a dict).

    Raises:
        ConverterTimeoutError: the child ran longer than ``timeout`` seconds.
        ConverterCrashError: the child raised, crashed or was killed; the
            message carries the child's error and stderr tail.
    """
    payload = json.dumps({"func": func_name, "kwargs": dict(kwargs)})
    child_env = {**os.environ, **(env or {})}
    repo_root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (repo_root, child_env.get("PYTHONPATH", "")) if p
    )
    # stderr goes to a file, not a pipe: a chatty converter must not block on
    # a full pipe while we are reading stdout.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "compression.pipeline.runner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env,
            preexec_fn=_limit_memory(memory_limit),
        )
        expired = threading.Event()

        def kill_on_timeout() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill_on_timeout)
        timer.start()
        try:
            final = _relay(proc, payload, progress)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        err.seek(0)
        tail = _tail(err.read())
    if expired.is_set():
        raise ConverterTimeoutError(
            f"{func_name} timed out after {timeout:.0f}s",
            stderr_tail=tail,
            returncode=proc.returncode,
        )
    return _result(func_name, final, proc.returncode, tail)


def _relay(
    proc: subprocess.Popen[str], payload: str, progress: ProgressFn
) -> dict[str, Any] | None:
    """Send the request, relay progress lines, return the final message."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; its exit status tells why
    final: dict[str, Any] | None = None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict) and "progress" in msg:
            p = msg["progress"]
            progress(float(p[0]), str(p[1]), str(p[2]))
        elif isinstance(msg, dict) and ("result" in msg or "error" in msg):
            final = msg
    proc.wait()
    return final


def _result(func_name: str, final: dict[str, Any] | None, returncode: int, tail: str) -> Any:
    if final is not None and "error" in final:
        raise ConverterCrashError(
            f"{func_name} failed: {final['error']}", stderr_tail=tail, returncode=returncode
        )
    if returncode != 0 or final is None:
        how = _describe_exit(returncode)
        detail = f"\n{tail}" if tail else ""
        raise ConverterCrashError(
            f"{func_name} converter {how}{detail}", stderr_tail=tail, returncode=returncode
        )
    return final["result"]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by signal {-returncode} (crash or out of memory)"
    if returncode == 0:
        return "exited without a result"
    return f"exited with status {returncode}"


def _crash_for_test(mode: str = "raise", message: str = "boom") -> None:
    """Helper for tests: fail in the ways real converters fail."""
    if mode == "raise":
        raise RuntimeError(message)
    if mode == "stderr-exit":
        sys.stderr.write(f"converter: {message}\n")
        sys.stderr.flush()
        os._exit(3)
    if mode == "sleep":
        import time

        time.sleep(600)
    if mode == "abort":
        sys.stderr.write(f"converter: {message}\n")
        sys.stderr.flush()
        os.abort()


def main() -> int:
    request = json.loads(sys.stdin.read())
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    def progress(fraction: float, stage: str, message: str) -> None:
        emit({"progress": [fraction, stage, message]})

    # Libraries may print to stdout; keep our JSON protocol clean.
    sys.stdout = sys.stderr
    try:
        result = _call(request["func"], request.get("kwargs", {}), progress)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
