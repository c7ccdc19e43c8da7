"""Model slots with an atomically switched pointer.

    state_dir/slots/{a,b,c}/   state_dir/current

A slot is a complete install only once its `slot.json` exists: it is written
last (after every payload file is fsynced) and lists each file's size. The
`current` pointer names the active slot and the previous one (the rollback
target); it is replaced with write-temp, fsync, rename, fsync-dir, so both
names change together or not at all.

Three slots, not two: an install goes to the *staging* slot, the one the
pointer names neither as active nor as previous. A failed or interrupted
install therefore never touches the rollback target; only a successful switch
rotates it (active becomes previous, the old previous is freed and emptied so
only two models stay on disk at rest). A kill -9 at any instant leaves
`current` on the last activated, complete slot and its previous slot intact.

Pointers written before the third slot existed have no `previous` field: the
other A/B slot is then the previous one, as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .record import BundleRecord, PipelineSpec
from .stream_aead import atomic_output
from .stream_aead import fsync_dir as _fsync_dir

UTC = timezone.utc  # datetime.UTC needs Python 3.11; devices may run 3.10

__all__ = [
    "SLOT_NAMES",
    "Slot",
    "SlotError",
    "SlotMeta",
    "SlotStore",
    "read_status",
    "write_status",
]

SLOT_NAMES = ("a", "b", "c")
META_FILE = "slot.json"
POINTER_FILE = "current"
STATUS_FILE = "status.json"
_MAX_JSON_BYTES = 256 * 1024

Hook = Callable[[str], None]


class SlotError(Exception):
    """A slot operation cannot proceed (e.g. no valid slot to roll back to)."""


@dataclass(frozen=True)
class SlotMeta:
    """What is installed in a slot. `files` and `installed_at` are set on activation."""

    bundle: str
    release: int
    runtime: str
    pipeline: dict[str, Any]
    model: str = ""
    version: str = ""
    record: dict[str, Any] | None = None
    installed_at: str = ""
    files: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: BundleRecord) -> SlotMeta:
        return cls(
            bundle=record.bundle_id,
            release=record.release,
            runtime=record.runtime,
            pipeline=record.pipeline.to_dict(),
            model=record.model,
            version=record.version,
            record=record.to_dict(),
        )

    def pipeline_spec(self) -> PipelineSpec:
        return PipelineSpec.from_dict(self.pipeline)

    def bundle_record(self) -> BundleRecord | None:
        return BundleRecord.from_dict(self.record) if self.record is not None else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SlotMeta:
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise SlotError("slot metadata has unknown fields")
        try:
            meta = cls(**data)
        except TypeError as e:
            raise SlotError(f"slot metadata is incomplete: {e}") from None
        if not isinstance(meta.files, dict) or not isinstance(meta.release, int):
            raise SlotError("slot metadata is malformed")
        return meta


@dataclass(frozen=True)
class Slot:
    """A complete install: slot name, its directory and its metadata."""

    name: str
    path: Path
    meta: SlotMeta


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > _MAX_JSON_BYTES:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _write_json(path: Path, data: Any, hook: Hook, step: str) -> None:
    """Atomic JSON write; `hook` runs after the temp file is written, before the rename."""
    with atomic_output(path) as out:
        out.write(json.dumps(data, sort_keys=True, indent=1).encode())
        hook(f"{step}:temp-written")


def _noop(step: str) -> None:
    return None


class SlotStore:
    """The two slots and the pointer under `state_dir`.

    `hook(step)` is called between the steps of every mutation so tests can
    crash the process exactly there.
    """

    def __init__(
        self, state_dir: Path | str, *, hook: Hook | None = None, create: bool = True
    ) -> None:
        self.state_dir = Path(state_dir)
        self.slots_dir = self.state_dir / "slots"
        self.pointer_path = self.state_dir / POINTER_FILE
        self._hook = hook or _noop
        if not create:
            return
        for name in SLOT_NAMES:
            (self.slots_dir / name).mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()

    @classmethod
    def read_only(cls, state_dir: Path | str) -> SlotStore:
        """A store to look at (e.g. for `status`): creates and removes nothing."""
        return cls(state_dir, create=False)

    def _remove_stale_temps(self) -> None:
        # Left by a crash between writing and renaming a pointer or status file.
        for stale in self.state_dir.glob(".*.part"):
            stale.unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------

    def pointer(self) -> dict[str, Any] | None:
        """The raw `current` JSON ({slot, bundle, release, installed_at}) or None."""
        data = _read_json(self.pointer_path)
        if not isinstance(data, dict) or data.get("slot") not in SLOT_NAMES:
            return None
        return data

    def pointer_stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, inode) of `current`: changes whenever the pointer is switched."""
        try:
            st = self.pointer_path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def slot(self, name: str) -> Slot | None:
        """The complete install in slot `name`, or None."""
        path = self.slots_dir / name
        data = _read_json(path / META_FILE)
        if data is None:
            return None
        try:
            meta = SlotMeta.from_dict(data)
        except SlotError:
            return None
        for file, size in meta.files.items():
            candidate = path / file
            if not candidate.is_file() or candidate.stat().st_size != size:
                return None
        return Slot(name, path, meta) if meta.files else None

    def active(self) -> Slot | None:
        """The slot `current` names, if it holds a complete install."""
        pointer = self.pointer()
        return self.slot(pointer["slot"]) if pointer else None

    def previous_name(self) -> str | None:
        """The slot the pointer keeps for rollback (None before a second install)."""
        pointer = self.pointer()
        if pointer is None:
            return None
        active, previous = pointer["slot"], pointer.get("previous")
        if "previous" not in pointer and active in ("a", "b"):
            previous = "b" if active == "a" else "a"  # a pointer from the A/B layout
        return previous if previous in SLOT_NAMES and previous != active else None

    def staging_name(self) -> str:
        """The slot an install goes to: neither the active nor the previous one."""
        pointer = self.pointer()
        taken = {pointer["slot"] if pointer else None, self.previous_name()}
        return next(name for name in SLOT_NAMES if name not in taken)

    def previous(self) -> Slot | None:
        """The rollback target, if it still holds a complete install."""
        name = self.previous_name()
        return self.slot(name) if name else None

    # -- mutations -----------------------------------------------------------

    def prepare_inactive(self) -> Path:
        """Empty the staging slot and return its directory to install into."""
        path = self.slots_dir / self.staging_name()
        self._hook("prepare:start")
        self._empty(path, "prepare")
        self._hook("prepare:emptied")
        return path

    def discard_staging(self) -> None:
        """Remove whatever a failed install left in the staging slot (frees its disk)."""
        self._empty(self.slots_dir / self.staging_name(), "discard")

    def _empty(self, path: Path, step: str) -> None:
        # Unmark first: from here on the slot is never taken for complete.
        (path / META_FILE).unlink(missing_ok=True)
        _fsync_dir(path)
        self._hook(f"{step}:unmarked")
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        _fsync_dir(path)

    def activate(self, meta: SlotMeta) -> Slot:
        """Seal the staging slot with `meta` and switch `current` to it.

        Call after the payload is extracted into `prepare_inactive()`'s
        directory and the model has loaded and passed its self-test. The
        active slot becomes the previous one; the old previous slot is freed.

        Raises:
            SlotError: the staging slot is empty.
        """
        name = self.staging_name()
        path = self.slots_dir / name
        files = {
            p.name: p.stat().st_size
            for p in sorted(path.iterdir())
            if p.is_file() and p.name != META_FILE and not p.name.endswith(".part")
        }
        if not files:
            raise SlotError(f"slot {name} is empty: extract the payload first")
        sealed = replace(meta, installed_at=_now(), files=files)
        self._hook("activate:start")
        _write_json(path / META_FILE, sealed.to_dict(), self._hook, "activate:seal")
        self._hook("activate:sealed")
        pointer = self.pointer()
        outgoing = pointer["slot"] if pointer and self.active() is not None else None
        self._switch(name, sealed, previous=outgoing)
        self._hook("activate:switched")
        # Only now is the old rollback target unreferenced: free its disk.
        self._empty(self.slots_dir / self.staging_name(), "free")
        self._hook("activate:freed")
        return Slot(name, path, sealed)

    def rollback(self) -> Slot:
        """Switch `current` back to the other slot.

        The slot rolled back from becomes the previous one, so the step can
        be undone the same way.

        Raises:
            SlotError: the previous slot holds no complete install.
        """
        target = self.previous()
        if target is None:
            raise SlotError("no previous install to roll back to")
        pointer = self.pointer()
        self._hook("rollback:start")
        self._switch(target.name, target.meta, previous=pointer["slot"] if pointer else None)
        self._hook("rollback:switched")
        return target

    def _switch(self, name: str, meta: SlotMeta, *, previous: str | None) -> None:
        pointer = {
            "slot": name,
            "previous": previous,
            "bundle": meta.bundle,
            "release": meta.release,
            "installed_at": meta.installed_at,
            "switched_at": _now(),
        }
        _write_json(self.pointer_path, pointer, self._hook, "switch")


def read_status(state_dir: Path) -> dict[str, Any]:
    """The agent's status file (update status, last errors); {} when absent."""
    data = _read_json(Path(state_dir) / STATUS_FILE)
    return data if isinstance(data, dict) else {}


def write_status(state_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the status file atomically and return the result."""
    status = read_status(state_dir)
    status.update(fields)
    status["updated_at"] = _now()
    with atomic_output(Path(state_dir) / STATUS_FILE) as out:
        out.write(json.dumps(status, sort_keys=True, indent=1).encode())
    return status
