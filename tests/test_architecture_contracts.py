"""The import-linter contracts of pyproject.toml (`make lint`) hold on the code, and each
one breaks when a copy of the code gets a deliberate violation.

The copies are real trees linted by the real `lint-imports`; several violations are
imports inside functions, which the contracts must see too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SERVER_PACKAGES = ("core", "accounts", "compression", "fleet", "tinyfleet")

# (contract id, file in the copy, code appended to it, what the report must name)
VIOLATIONS = [
    (
        "layers",
        "accounts/permissions.py",
        "def _upward() -> None:\n    from fleet.models import Device\n",
        "accounts.permissions",
    ),
    (
        "pipeline",
        "compression/pipeline/errors.py",
        "def _framework() -> None:\n    import django\n",
        "compression.pipeline.errors",
    ),
    (
        "agent",
        "agent/tinyfleet_agent/config.py",
        "def _queue() -> None:\n    import celery\n",
        "tinyfleet_agent.config",
    ),
    (
        "agent-protocol",
        "fleet/telemetry/drift.py",
        "from tinyfleet_agent._internal.telemetry import Histogram\n",
        "fleet.telemetry.drift",
    ),
    (
        "celery",
        "fleet/security/publish_worker.py",
        "def _request_side() -> None:\n    from fleet.security import publish\n",
        "fleet.security.publish_worker",
    ),
    (
        "acyclic",
        "fleet/security/keystore.py",
        "def _back_up_the_chain() -> None:\n    from fleet.security import director\n",
        ".keystore -> .director",  # named relative to fleet.security, where the cycle is
    ),
]


def _copy_tree(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in SERVER_PACKAGES:
        shutil.copytree(ROOT / package, dst / package, ignore=ignore)
    shutil.copytree(
        ROOT / "agent" / "tinyfleet_agent", dst / "agent" / "tinyfleet_agent", ignore=ignore
    )
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _lint(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path, ahead of the editable installs of the real tree.
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'agent'}"}
    selection = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *selection],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_keeps_every_contract_on_the_code_and_on_a_clean_copy(tmp_path: Path) -> None:
    for root in (ROOT, _copy_tree(tmp_path / "copy")):
        result = _lint(root)

        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{len(VIOLATIONS)} kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("contract", "path", "code", "named"), VIOLATIONS)
def test_it_breaks_a_contract_on_a_deliberate_violation(
    tmp_path: Path, contract: str, path: str, code: str, named: str
) -> None:
    root = _copy_tree(tmp_path / "copy")
    target = root / path
    target.write_text(target.read_text() + "\n\n" + code)

    result = _lint(root, contract)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and "0 kept, 1 broken" in result.stdout
    assert named in result.stdout, result.stdout
