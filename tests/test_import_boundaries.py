"""Layering rules from DESIGN.md, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_FOR_AGENT = ("django", "celery", "torch", "fleet", "compression", "tinyfleet")


def _loaded_after_import(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "agent",
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "agent")},
    )
    return {m.split(".")[0] for m in out.stdout.split()}


def test_the_agent_never_imports_server_or_heavy_packages() -> None:
    modules = [
        p.relative_to(ROOT / "agent").with_suffix("").as_posix().replace("/", ".")
        for p in (ROOT / "agent" / "tinyfleet_agent").rglob("*.py")
    ]
    imports = "\n".join(f"import {m.removesuffix('.__init__')}" for m in modules)
    loaded = _loaded_after_import(imports)
    assert not loaded & set(FORBIDDEN_FOR_AGENT), loaded & set(FORBIDDEN_FOR_AGENT)


def test_the_pipeline_never_imports_django() -> None:
    # Every module, sub-packages (auto_int8/, tflm/) included.
    modules = [
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        for p in (ROOT / "compression" / "pipeline").rglob("*.py")
        if p.stem != "__main__"
    ]
    assert any(".tflm." in m for m in modules) and any(".auto_int8." in m for m in modules)
    probe = "\n".join(f"import {m}" for m in modules)
    out = subprocess.run(
        [sys.executable, "-c", f"{probe}\nimport sys\nprint('django' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'agent'}"},
    )
    assert out.stdout.strip() == "False"
