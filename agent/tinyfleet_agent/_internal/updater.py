"""The update loop: poll the desired state, verify both repositories, download, decrypt,
install into the inactive slot, self-test, switch. Serving never depends on any of it:
every failure leaves the active slot untouched and is reported with its reason.

Disk: the preflight wants 2x the bundle + a margin free (ciphertext and plaintext, then
plaintext and the extracted slot, coexist). Running out of disk anyway (another writer
filled it meanwhile) is an ENOSPC in the middle of a write: the partial download, the
plaintext and the staging slot are removed, the failure is reported, and - unlike a bad
bundle - the install is tried again at the next poll, so it succeeds once space is freed.
A failed install never touches the active slot or the previous (rollback) slot.

Local rollback: `tinyfleet-agent rollback` (see `reject_locally`) switches to the previous
slot, remembers the bundle it left in status.json (`rejected_locally`) and queues two
events: `rolled-back` (to the bundle now active, reason "local rollback") and `refused`
(the rejected bundle, reason "rejected locally"), so the server and the rollout's install
gate see it. While the server still assigns the rejected bundle the updater does not
install it again (outcome "rejected-locally", also after a restart); once the server
assigns any other bundle, the rejection is forgotten.

Release floor: when a bundle activates, the model's floor becomes the release it
replaced, so the device can step back exactly one release (the previous slot, which it
verified before) when a rollout rolls back, and never further.
"""

from __future__ import annotations

import errno
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
from .slots import Slot, SlotMeta, SlotStore, read_status, write_status
from .stream_aead import atomic_write_bytes, decrypt_file
from .tuf_verify import Assignment, TrustedState, resolve_assignment, update_root

UTC = timezone.utc  # datetime.UTC needs Python 3.11; devices may run 3.10

log = logging.getLogger("tinyfleet_agent.updater")
TRUST_FILE = "trust.json"
MAX_BACKOFF_S = 300.0
MIN_WAKE_GAP_S = 1.0  # wake-ups (MQTT) cost at most one poll per this many seconds
DISK_MARGIN = 64 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class UpdateRefusedError(Exception):
    """The assignment cannot be installed here; `reason` is reported to the server."""


class InsufficientDiskError(UpdateRefusedError):
    """Not enough free disk for this install now; retried at the next poll."""


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
    # Every fresh desired-state body (settings beside the bundle: the fallback URL, the
    # MQTT broker); `wake` cuts the sleep between polls short.
    on_state: Callable[[dict[str, Any]], None] = lambda _: None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    disk_margin: int = DISK_MARGIN
    etag: str | None = None
    failed: dict[str, str] = field(default_factory=dict)
    backoff: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def events(self) -> Outbox:
        if not hasattr(self, "_events"):
            self._events = events_outbox(self.state_dir)
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
        rejected = _rejected_locally(self.state_dir)
        if desired is None or (active is not None and active.meta.bundle == desired):
            outcome = "current"
        elif desired in self.failed:
            outcome = "failed-before"
        elif desired == rejected:
            outcome = "rejected-locally"
        else:
            outcome = self.install(desired)
        if rejected and desired != rejected:
            write_status(self.state_dir, rejected_locally=None)  # the server moved on
        write_status(
            self.state_dir, last_check={"at": self.clock().isoformat(), "outcome": outcome}
        )
        if outcome not in ("frozen", "deferred"):
            self.etag = response.headers.get("ETag")
        return outcome

    # -- one install ------------------------------------------------------------------

    def install(self, desired: str) -> str:
        """Install `desired`; returns "installed", "failed", "deferred" or "frozen"."""
        self.report("downloading", desired)
        try:
            bundle = self._install(desired)
        except ExpiredMetadataError as exc:
            self._health(update="frozen", last_error=str(exc))
            self.report("frozen", desired, str(exc))
            return "frozen"  # look again next poll: the server may have refreshed
        except InsufficientDiskError as exc:
            return self._defer(desired, f"{type(exc).__name__}: {exc}")
        except (BundleError, UpdateRefusedError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._discard_partial_install(desired)
            self.failed[desired] = reason
            self._record_attempt(desired, "failed", reason)
            self.report("failed", desired, reason)
            self._health(update="failed", last_error=reason)
            return "failed"
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                self._discard_partial_install(desired)
                raise
            self._discard_partial_install(desired, drop_download=True)
            return self._defer(desired, f"disk full while installing: {exc.strerror}")
        self._record_attempt(bundle, "active", "")
        self.report("active", bundle)
        self._health(update="idle", last_error=None)
        return "installed"

    def _install(self, desired: str) -> str:
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
        return bundle

    def _defer(self, desired: str, reason: str) -> str:
        """A failure that more disk cures: reported, not remembered, retried next poll."""
        self._record_attempt(desired, "failed", reason)
        self.report("failed", desired, reason)
        self._health(update="disk-full", last_error=reason)
        return "deferred"

    def _discard_partial_install(self, bundle: str, *, drop_download: bool = False) -> None:
        """Free what a failed install wrote; the active and previous slots are untouched."""
        downloads = self.state_dir / "downloads"
        names = [f"{bundle}.zip"] + ([f"{bundle}.enc", f"{bundle}.enc.part"] * drop_download)
        for name in names:
            (downloads / name).unlink(missing_ok=True)
        try:
            self.store.discard_staging()
        except OSError:
            log.exception("could not empty the staging slot")  # emptied again next install

    def _record_attempt(self, bundle: str, result: str, reason: str) -> None:
        attempt = {"bundle": bundle, "result": result, "reason": reason[:500]}
        self._health(last_attempt={**attempt, "at": self.clock().isoformat()})

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
        self._health(
            metadata="fresh",
            metadata_checked_at=self.clock().isoformat(),
            metadata_expires=_earliest_expiry(timestamp, snapshot, targets, director),
        )
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
        needed = 2 * assignment.length + self.disk_margin
        free = shutil.disk_usage(self.state_dir).free
        if free < needed:
            raise InsufficientDiskError(
                f"not enough disk: {free} bytes free, {needed} needed "
                f"(2 x {assignment.length} byte bundle + {self.disk_margin} margin)"
            )

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
        queue_event(self.events, state, bundle, reason, self.clock())

    def flush_events(self) -> None:
        pending = self.events.peek(50)
        if not pending:
            return
        self.client.events([p["event"] for p in pending])
        self.events.ack(p["batch_id"] for p in pending)


def queue_event(
    events: Outbox, state: str, bundle: str, reason: str, at: datetime, **detail: Any
) -> None:
    """Put one state-transition event in the outbox (sent by the running agent)."""
    event: dict[str, Any] = {
        "state": state,
        "bundle": bundle,
        "reason": reason[:500],
        "at": at.isoformat(),
    }
    if detail:
        event["detail"] = detail
    events.put({"batch_id": str(uuid.uuid4()), "event": event})


def events_outbox(state_dir: Path) -> Outbox:
    return Outbox(state_dir / "events.sqlite", capacity=500)


def _rejected_locally(state_dir: Path) -> str | None:
    rejected = read_status(state_dir).get("rejected_locally")
    bundle = rejected.get("bundle") if isinstance(rejected, dict) else None
    return bundle if isinstance(bundle, str) else None


def reject_locally(store: SlotStore, clock: Callable[[], datetime] | None = None) -> Slot:
    """Roll back to the previous slot on the device's own initiative and report it.

    Raises:
        SlotError: there is no complete previous install.
    """
    now = (clock or (lambda: datetime.now(UTC)))()
    leaving = store.active()
    slot = store.rollback()
    rejected = leaving.meta.bundle if leaving is not None else ""
    write_status(
        store.state_dir,
        rejected_locally={
            "bundle": rejected,
            "rolled_back_to": slot.meta.bundle,
            "at": now.isoformat(),
        },
        last_attempt={
            "bundle": rejected,
            "result": "rejected-locally",
            "reason": "local rollback",
            "at": now.isoformat(),
        },
    )
    events = events_outbox(store.state_dir)
    queue_event(events, "rolled-back", slot.meta.bundle, "local rollback", now, rejected=rejected)
    if rejected:
        queue_event(events, "refused", rejected, "rejected locally (tinyfleet-agent rollback)", now)
    return slot


def _earliest_expiry(*verified: bytes) -> str | None:
    """When the first of these (already verified) metadata files expires: updates stop
    then ("frozen") unless the server refreshed them. Shown by `status`."""
    stamps = []
    for metadata in verified:
        try:
            stamps.append(str(json.loads(metadata)["signed"]["expires"]))
        except (ValueError, KeyError, TypeError):
            continue
    return min(stamps) if stamps else None  # ISO-8601 "Z" stamps sort by time


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
