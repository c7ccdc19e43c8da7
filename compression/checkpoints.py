"""Where a training job keeps its checkpoint between deliveries.

The folder is named by the job's inputs (parent bytes, recipe, parameters, datasets), not
by the job: a re-delivered job, and a new job with the same inputs after a cancel, find
the same checkpoint and continue from it. It lives on the worker's disk under the data
dir and is removed once the job succeeds or fails for a reason a retry would not fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from django.conf import settings

from compression.models import Job
from compression.pipeline.runner import ConverterCrashError, ConverterTimeoutError


def checkpoint_dir(job: Job) -> Path:
    identity = {
        "parent": job.version.sha256,
        "recipe": job.recipe,
        "params": job.params,
        "train": job.calibration_dataset.sha256 if job.calibration_dataset else None,
        "eval": job.eval_dataset.sha256 if job.eval_dataset else None,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return Path(settings.DATA_DIR) / "checkpoints" / key


def keeps_checkpoint(exc: BaseException) -> bool:
    """True when the run was interrupted (killed, out of memory, timed out), so the same
    inputs deserve to continue; False for errors in the inputs themselves."""
    if isinstance(exc, ConverterTimeoutError):
        return True
    if isinstance(exc, ConverterCrashError):
        return exc.returncode is not None and exc.returncode < 0
    return False


def discard(job: Job) -> None:
    shutil.rmtree(checkpoint_dir(job), ignore_errors=True)
