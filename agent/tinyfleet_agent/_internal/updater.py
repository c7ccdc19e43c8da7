"""The update loop: poll the desired state, verify both repositories, download, decrypt,
install into the inactive slot, self-test, switch. Serving never depends on any of it:
every failure leaves the active slot untouched and is reported with its reason.

Release floor: when a bundle activates, the model's floor becomes the release it
replaced, so the device can step back exactly one release (the previous slot, which it
verified before) when a rollout rolls back, and never further.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .client import DeviceClient, RevokedError, ServerError
from .errors import BundleError, ExpiredMetadataError
from .identity import DeviceKeys
from .keywrap import unwrap_key
from .outbox import Outbox
from .payload import extract_payload
from .runtime import check_runtime
from .selftest import run_golden_selftest
from .slots import SlotMeta, SlotStore, write_status
from .stream_aead import atomic_write_bytes, decrypt_file
from .tuf_verify import Assignment, TrustedState, resolve_assignment, update_root

UTC = timezone.utc  # datetime.UTC needs Python 3.11; devices may run 3.10

log = logging.getLogger("tinyfleet_agent.updater")
TRUST_FILE = "trust.json"
MAX_BACKOFF_S = 300.0
MIN_WAKE_GAP_S = 1.0  # wake-ups (MQTT) cost at most one poll per this many seconds
DISK_MARGIN = 64 << 20


class UpdateRefusedError(Exception):
    """The assignment cannot be installed here; `reason` is reported to the server."""


@dataclass
class Updater:
    client: DeviceClient
    keys: DeviceKeys
    device_id: str
    store: SlotStore
    state_dir: Path
    threads: int = 1
    poll_interval: float = 30.0
    on_health: Callable[..., None] = lambda **_: None
    on_selftest: Callable[[str, bool, float], None] = lambda *_: None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    etag: str | None = None
    failed: dict[str, str] = field(default_factory=dict)
    backoff: float = 0.0
    # Each fresh state answer (push settings ride on it); `wake` cuts the sleep short.
    on_state: Callable[[dict[str, Any]], None] = lambda _: None
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def events(self) -> Outbox:
        if not hasattr(self, "_events"):
            self._events = Outbox(self.state_dir / "events.sqlite", capacity=500)
        return self._events

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            delay = self.poll_interval
            try:
                self.check_once()
                self.flush_events()
                self.backoff = 0.0
            except RevokedError as exc:
                self._health(update="revoked", last_error=str(exc))
                delay = MAX_BACKOFF_S  # keep serving; ask again rarely
            except ServerError as exc:
                self.backoff = min(MAX_BACKOFF_S, max(1.0, self.backoff * 2))
                delay = self.backoff
                self._health(update="server-unreachable", last_error=str(exc))
            except Exception as exc:  # never let the updater take serving down
                log.exception("update check failed")
                self._health(update="error", last_error=f"{type(exc).__name__}: {exc}")
            self._sleep(stop, delay * random.uniform(0.8, 1.2))

    def _sleep(self, stop: threading.Event, delay: float) -> None:
        """Until the next poll is due, or earlier when woken (a burst of wake-ups, or a
        flood of forged ones, costs one poll per MIN_WAKE_GAP_S at most)."""
        started = time.monotonic()
        deadline = started + delay
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices: `stop` is a separate event and must end the loop promptly.
            if self.wake.wait(min(remaining, 0.5)):
                self.wake.clear()
                stop.wait(max(0.0, min(delay, MIN_WAKE_GAP_S) - (time.monotonic() - started)))
                return

    def check_once(self) -> str:
        """One poll; returns what happened ("unchanged", "current", "installed", ...).

        The ETag is remembered only once the desired state was fully acted on, so a
        transient failure (network, 5xx) is retried at the next poll, not hidden by 304s.
        """
        response = self.client.state(self.etag)
        if response.status == 304:
            return "unchanged"
        body = response.json()
        self.poll_interval = float(body.get("poll_interval") or self.poll_interval)
        self.on_state(body)
        desired = (body.get("desired") or {}).get("bundle")
        active = self.store.active()
        if desired is None or (active is not None and active.meta.bundle == desired):
            outcome = "current"
        elif desired in self.failed:
            outcome = "failed-before"
        else:
            outcome = self.install(desired)
        if outcome != "frozen":
            self.etag = response.headers.get("ETag")
        return outcome

    # -- one install ------------------------------------------------------------------

    def install(self, desired: str) -> str:
        self.report("downloading", desired)
        try:
            assignment = self._verified_assignment()
            bundle = assignment.record.bundle_id
            self._preflight(assignment)
            plaintext = self._fetch_and_decrypt(assignment)
            self.report("installing", bundle)
            directory = self.store.prepare_inactive()
            extract_payload(plaintext, directory, golden_sha256=assignment.record.golden_set_sha256)
            plaintext.unlink(missing_ok=True)
            self._self_test(directory, assignment)
            self._activate(assignment)
        except ExpiredMetadataError as exc:
            self._health(update="frozen", last_error=str(exc))
            self.report("frozen", desired, str(exc))
            return "frozen"  # look again next poll: the server may have refreshed
        except (BundleError, UpdateRefusedError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.failed[desired] = reason
            self.report("failed", desired, reason)
            self._health(update="failed", last_error=reason)
            return "failed"
        self.report("active", bundle)
        self._health(update="idle", last_error=None)
        return "installed"

    def _verified_assignment(self) -> Assignment:
        state = self._load_trust()
        self._follow_roots(state, "image")
        self._follow_roots(state, "director")
        timestamp = self._required("image", "timestamp.json")
        snapshot_version = _pinned_version(timestamp, "snapshot.json")
        snapshot = self._required("image", f"{snapshot_version}.snapshot.json")
        targets_version = _pinned_version(snapshot, "targets.json")
        targets = self._required("image", f"{targets_version}.targets.json")
        director = self._required("director", "targets.json")
        self.report("verifying", "")
        assignment = resolve_assignment(
            state,
            timestamp=timestamp,
            snapshot=snapshot,
            targets=targets,
            director_targets=director,
            device_id=self.device_id,
            now=self.clock(),
        )
        self._save_trust(state)  # raised metadata floors persist even if installing fails
        self._health(metadata="fresh", metadata_checked_at=self.clock().isoformat())
        return assignment

    def _follow_roots(self, state: TrustedState, repository: str) -> None:
        for _ in range(64):
            version = state.root(repository).signed.version + 1  # type: ignore[arg-type]
            data = self.client.metadata(repository, f"{version}.root.json")
            if data is None:
                return
            update_root(state, data, repository=repository)  # type: ignore[arg-type]

    def _required(self, repository: str, name: str) -> bytes:
        data = self.client.metadata(repository, name)
        if data is None:
            raise UpdateRefusedError(f"the server has no {repository} {name}")
        return data

    def _preflight(self, assignment: Assignment) -> None:
        import platform

        record = assignment.record
        if record.arch and platform.machine() not in record.arch:
            raise UpdateRefusedError(
                f"bundle is for {list(record.arch)}, this is {platform.machine()}"
            )
        try:
            check_runtime(record.runtime, record.min_runtime_version)
        except Exception as exc:
            raise UpdateRefusedError(str(exc)) from exc
        needed = 2 * assignment.length + DISK_MARGIN
        free = shutil.disk_usage(self.state_dir).free
        if free < needed:
            raise UpdateRefusedError(f"not enough disk: {free} bytes free, {needed} needed")

    def _fetch_and_decrypt(self, assignment: Assignment) -> Path:
        downloads = self.state_dir / "downloads"
        downloads.mkdir(exist_ok=True)
        record = assignment.record
        ciphertext = downloads / f"{record.bundle_id}.enc"
        if not ciphertext.exists():
            self.client.download(record.bundle_id, ciphertext, assignment.length, assignment.sha256)
        key = unwrap_key(
            assignment.wrapped_key,
            self.keys.decryption,
            bundle_id=record.bundle_id,
            release=record.release,
            device_id=self.device_id,
        )
        plaintext = downloads / f"{record.bundle_id}.zip"
        try:
            decrypt_file(ciphertext, plaintext, key, record.cipher, check_ciphertext_hash=False)
        except BundleError:
            ciphertext.unlink(missing_ok=True)  # do not retry the same bad bytes
            raise
        ciphertext.unlink(missing_ok=True)
        return plaintext

    def _self_test(self, directory: Path, assignment: Assignment) -> None:
        from ..predictor import Predictor

        self.report("self-test", assignment.record.bundle_id)
        try:
            predictor = Predictor(directory, assignment.record, self.threads)
        except Exception as exc:
            raise UpdateRefusedError(f"model does not load: {exc}") from exc
        result = run_golden_selftest(predictor, directory / "golden.npz")
        close = getattr(predictor, "close", None)
        if callable(close):
            close()
        self.on_selftest(assignment.record.bundle_id, result.passed, result.agreement)
        if not result.passed:
            raise UpdateRefusedError(f"golden self-test failed: {result.reason}")
        self._health(last_selftest=result.to_dict())

    def _activate(self, assignment: Assignment) -> None:
        record = assignment.record
        state = self._load_trust()
        active = self.store.active()
        # Keep exactly one step of rollback possible (see the module docstring); with no
        # earlier release of this model installed, the floor is this release itself.
        floor = record.release
        if active is not None and active.meta.model == record.model:
            floor = min(active.meta.release, record.release)
        if floor > state.installed_release(record.model):
            state.record_installed(record.model, floor)
        self.store.activate(SlotMeta.from_record(record))
        self._save_trust(state)

    # -- state, reports ---------------------------------------------------------------

    def _load_trust(self) -> TrustedState:
        return TrustedState.from_json((self.state_dir / TRUST_FILE).read_bytes())

    def _save_trust(self, state: TrustedState) -> None:
        atomic_write_bytes(self.state_dir / TRUST_FILE, state.to_json())

    def _health(self, **values: Any) -> None:
        write_status(self.state_dir, **values)
        self.on_health(**values)

    def report(self, state: str, bundle: str, reason: str = "") -> None:
        log.info("update-%s", state, extra={"bundle": bundle, "reason": reason})
        event = {
            "state": state,
            "bundle": bundle,
            "reason": reason[:500],
            "at": self.clock().isoformat(),
        }
        self.events.put({"batch_id": str(uuid.uuid4()), "event": event})

    def flush_events(self) -> None:
        pending = self.events.peek(50)
        if not pending:
            return
        self.client.events([p["event"] for p in pending])
        self.events.ack(p["batch_id"] for p in pending)


def _pinned_version(metadata: bytes, name: str) -> int:
    """The version a timestamp/snapshot names for `name` (length-capped JSON, read only
    to know which file to fetch; the verifier checks everything)."""
    try:
        version = json.loads(metadata)["signed"]["meta"][name]["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpdateRefusedError(f"metadata does not name a {name} version") from exc
    if not isinstance(version, int) or version < 1:
        raise UpdateRefusedError(f"metadata names an invalid {name} version")
    return version
