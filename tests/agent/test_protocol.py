"""`tinyfleet_agent.protocol` is the whole contract the server relies on."""

from __future__ import annotations

import ast
from pathlib import Path

from tinyfleet_agent import protocol

AGENT = Path(protocol.__file__).resolve().parent


def _reported_states() -> set[str]:
    """Every literal state the agent passes to `report(state, ...)` or
    `queue_event(outbox, state, ...)` anywhere in its source."""
    states = set()
    for path in AGENT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            position = {"report": 0, "queue_event": 1}.get(name)
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                states.add(arg.value)
    return states


def test_it_lists_exactly_the_event_states_the_agent_reports() -> None:
    reported = _reported_states()

    assert len(reported) >= 8  # the scan really finds the updater's calls
    assert reported == protocol.EVENT_STATES


def test_it_exports_every_name_it_lists() -> None:
    missing = [name for name in protocol.__all__ if not hasattr(protocol, name)]

    assert missing == []
    assert protocol.DEVICE_API_PREFIX == "/api/device/v1"
