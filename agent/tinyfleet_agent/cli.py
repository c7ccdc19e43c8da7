"""The `tinyfleet-agent` command.

    tinyfleet-agent status [--json]
    tinyfleet-agent predict TEXT... [--json] [--in-process]
    tinyfleet-agent rollback
    tinyfleet-agent serve-local [--listen 127.0.0.1:8470] [--unix-socket PATH]
    tinyfleet-agent enroll | run | verify      (server connection; see cmd_* below)

Global flags (`--state-dir`, `--config`, `--log-level`) go before the
subcommand. Logs are JSON lines on stderr; results go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from ._internal.logs import fields, setup_logging
from ._internal.runtime import restrict_runtimes
from ._internal.slots import Slot, SlotError, SlotStore, write_status
from ._internal.status_report import build_report, format_report
from .config import AgentConfig, load_config
from .localapi import LocalApi, NonLoopbackError
from .predictor import InputError, Predictor, RuntimeLoadError, UnsupportedRuntimeError

__all__ = ["SlotFollower", "bundle_meta", "main"]

log = logging.getLogger("tinyfleet_agent.cli")
PID_FILE = "agent.pid"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def bundle_meta(slot: Slot) -> dict[str, Any]:
    """What /v1/model and /v1/health say about the install in `slot`."""
    m = slot.meta
    return {
        "bundle": m.bundle,
        "release": m.release,
        "model": m.model,
        "version": m.version,
        "slot": slot.name,
        "installed_at": m.installed_at,
    }


class SlotFollower:
    """Keeps the local API serving whatever `current` points to.

    `poll()` reloads when the pointer file changed (another process ran
    `rollback`, or the updater activated a slot) or after `request_reload()`
    (SIGHUP). A slot that fails to load never replaces a working model.
    """

    def __init__(self, store: SlotStore, api: LocalApi, config: AgentConfig) -> None:
        self.store, self.api, self.config = store, api, config
        self._stamp: tuple[int, int] | None = None
        self._serving: tuple[str, str, str] | None = None
        self._reload = threading.Event()

    def request_reload(self) -> None:
        self._reload.set()

    def poll(self) -> None:
        stamp = self.store.pointer_stamp()
        if stamp == self._stamp and not self._reload.is_set():
            return
        self._reload.clear()
        self._stamp = stamp
        slot = self.store.active()
        if slot is None:
            if stamp is not None:
                self._fail("the current pointer names no complete slot")
            return
        key = (slot.name, slot.meta.bundle, slot.meta.installed_at)
        if key != self._serving:
            self._load(slot, key)

    def _load(self, slot: Slot, key: tuple[str, str, str]) -> None:
        try:
            predictor = Predictor.from_slot(
                slot, self.config.threads, batch_window_ms=self.config.batch_window_ms
            )
        except (UnsupportedRuntimeError, RuntimeLoadError, SlotError, ValueError) as e:
            self._fail(f"slot {slot.name} ({slot.meta.bundle}) failed to load: {e}")
            return
        self.api.set_predictor(predictor, bundle_meta(slot))
        self._serving = key
        log.info(
            "model-loaded",
            extra=fields(
                bundle=slot.meta.bundle,
                slot=slot.name,
                load_ms=round(predictor.load_seconds * 1e3, 1),
            ),
        )

    def _fail(self, message: str) -> None:
        # Keep serving the model we have: a bad switch must not stop inference.
        log.error("model-load-failed", extra=fields(error=message))
        # The file first: whoever sees the error in /v1/health then finds it in status too.
        with contextlib.suppress(OSError):
            write_status(self.store.state_dir, last_error=message)
        self.api.set_health(last_error=message)


# -- commands ---------------------------------------------------------------------


def _agent_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def cmd_status(args: argparse.Namespace, config: AgentConfig) -> int:
    state_dir = config.state_dir
    if not state_dir.is_dir():
        print(f"state directory {state_dir} does not exist (not enrolled yet?)", file=sys.stderr)
        return EXIT_ERROR
    listen = str(config.unix_socket) if config.unix_socket else config.listen
    report = build_report(state_dir, listen=listen, pid_file=PID_FILE, version=__version__)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(format_report(report)))
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, config: AgentConfig) -> int:
    from ._internal.updater import reject_locally  # local: only this command needs it

    store = SlotStore(config.state_dir)
    try:
        slot = reject_locally(store)  # also tells the server (see updater.reject_locally)
    except SlotError as e:
        print(f"cannot roll back: {e}", file=sys.stderr)
        return EXIT_ERROR
    pid = _agent_pid(config.state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # the agent also notices the pointer within a second
    print(f"rolled back to {slot.meta.bundle} release {slot.meta.release} (slot {slot.name})")
    return EXIT_OK


def _parse_inputs(texts: Sequence[str]) -> list[Any]:
    # Tensor-task inputs are JSON objects; everything else is text.
    inputs: list[Any] = []
    for text in texts:
        if text.startswith("{"):
            try:
                inputs.append(json.loads(text))
                continue
            except ValueError:
                pass
        inputs.append(text)
    return inputs


def _predict_http(config: AgentConfig, inputs: list[Any]) -> dict[str, Any]:
    body = json.dumps({"inputs": inputs}).encode()
    conn: http.client.HTTPConnection
    if config.unix_socket is not None:
        conn = _UnixConnection(str(config.unix_socket))
    else:
        conn = http.client.HTTPConnection(config.host, config.port, timeout=60)
    try:
        conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read() or b"{}")
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"agent answered {response.status}: {payload.get('error')}")
    return dict(payload)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _predict_in_process(config: AgentConfig, inputs: list[Any]) -> dict[str, Any]:
    slot = SlotStore(config.state_dir).active()
    if slot is None:
        raise RuntimeError("no model is installed")
    predictor = Predictor.from_slot(slot, config.threads)
    try:
        return {"outputs": predictor.predict(inputs), "bundle": slot.meta.bundle}
    finally:
        predictor.close()


def _format_output(output: Any) -> str:
    if isinstance(output, dict) and "label" in output:
        low = "  (low confidence)" if output.get("low_confidence") else ""
        return f"{output['label']}  {output['confidence']:.3f}{low}"
    if isinstance(output, dict) and "embedding" in output:
        vector = output["embedding"]
        head = " ".join(f"{v:+.4f}" for v in vector[:4])
        return f"embedding[{len(vector)}] {head} ..."
    if isinstance(output, dict) and "tokens" in output:
        return " ".join(f"{t['token']}/{t['label']}" for t in output["tokens"])
    return json.dumps(output)


def cmd_predict(args: argparse.Namespace, config: AgentConfig) -> int:
    inputs = _parse_inputs(args.text)
    try:
        if args.in_process:
            result = _predict_in_process(config, inputs)
        else:
            result = _predict_http(config, inputs)
    except (ConnectionError, FileNotFoundError, TimeoutError) as e:
        print(f"agent not reachable ({e}); is it running? try --in-process", file=sys.stderr)
        return EXIT_ERROR
    except (RuntimeError, InputError, UnsupportedRuntimeError, RuntimeLoadError) as e:
        print(f"prediction failed: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result))
    else:
        for text, output in zip(args.text, result["outputs"], strict=True):
            print(f"{text}\t{_format_output(output)}")
    return EXIT_OK


def _make_api(config: AgentConfig) -> LocalApi:
    return LocalApi(
        config.listen,
        unix_socket=config.unix_socket,
        allow_non_loopback=config.allow_non_loopback,
        max_body_bytes=config.max_body_bytes,
    )


def serve(
    config: AgentConfig,
    tick: Callable[[], None] | None = None,
    attach: Callable[[LocalApi], Any] | None = None,
) -> int:
    """Serve the active slot on the local API until SIGTERM/SIGINT.

    `tick()` runs about once a second on the main thread (the `run` command
    hooks its update and telemetry loop in here).
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    other = _agent_pid(config.state_dir)
    if other is not None and other != os.getpid():
        log.error("already-running", extra=fields(pid=other, state_dir=str(config.state_dir)))
        return EXIT_ERROR
    store = SlotStore(config.state_dir)
    try:
        api = _make_api(config)
    except (NonLoopbackError, OSError) as e:
        log.error("cannot-listen", extra=fields(error=str(e)))
        return EXIT_ERROR
    follower = SlotFollower(store, api, config)
    follower.poll()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            follower.request_reload()
        else:
            stop.set()

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    pid_file = config.state_dir / PID_FILE
    pid_file.write_text(str(os.getpid()))
    api.start()
    with contextlib.suppress(OSError):
        write_status(config.state_dir, listening=api.address)  # for `status`
    from ._internal.fieldtest import PeriodicSelfTest, reporter  # local: pulls the updater

    tester = PeriodicSelfTest(
        api,
        config.selftest_interval_s,
        reporter(store, api, rollback=config.selftest_rollback),
    )
    tester.start()
    # `attach` (the `run` command) links to the server once the API exists; serving
    # never waits for it and keeps going whatever it does.
    link = attach(api) if attach is not None else None
    if link is not None:
        link.start()
    try:
        while not stop.wait(1.0):
            follower.poll()
            if tick is not None:
                tick()
            if link is not None:
                link.tick()
    finally:
        tester.stop()
        if link is not None:
            link.close()
        api.shutdown()
        pid_file.unlink(missing_ok=True)
        log.info("stopped")
    return EXIT_OK


def cmd_serve_local(args: argparse.Namespace, config: AgentConfig) -> int:
    return serve(config)


def _not_available(name: str) -> int:
    print(f"tinyfleet-agent {name}: not available yet in this version", file=sys.stderr)
    return EXIT_USAGE


def cmd_enroll(args: argparse.Namespace, config: AgentConfig) -> int:
    """Generate this device's keys, enroll with the server, keep the trusted roots."""
    from .fleet import EnrollError, enroll

    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--label {item!r} must be KEY=VALUE", file=sys.stderr)
            return EXIT_USAGE
        labels[key] = value
    try:
        device = enroll(
            config.state_dir,
            args.server,
            args.token,
            name=args.name,
            labels=labels,
            pin=getattr(args, "root_fingerprint", None),
        )
    except EnrollError as e:
        print(f"tinyfleet-agent enroll: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(device, indent=2))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, config: AgentConfig) -> int:
    """Serve the active model and follow the server: updates, events, telemetry."""
    from .fleet import FleetLink

    if not (config.state_dir / "device.json").exists():
        print(
            "tinyfleet-agent run: not enrolled; run `tinyfleet-agent enroll` first", file=sys.stderr
        )
        return EXIT_USAGE
    if config.mqtt == "on":
        from ._internal.wakeup import MqttUnavailableError, require_paho

        try:
            require_paho()
        except MqttUnavailableError as e:
            print(f"tinyfleet-agent run: {e}", file=sys.stderr)
            return EXIT_USAGE
    return serve(config, attach=lambda api: FleetLink(config, api))


def cmd_verify(args: argparse.Namespace, config: AgentConfig) -> int:
    """Check an exported bundle offline (signatures, expiry, hashes; decrypt with a key)."""
    from . import verify_cli  # lazy: it pulls in tuf (slow start, more RSS)

    return verify_cli.run(args)


# -- argument parsing -------------------------------------------------------------------


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser; `verify`'s options are only built when `argv` names it."""
    parser = argparse.ArgumentParser(prog="tinyfleet-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--state-dir", type=Path, help="default /var/lib/tinyfleet-agent")
    parser.add_argument("--config", type=Path, help="TOML file (default STATE_DIR/agent.toml)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", help="show the active and previous install")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("predict", help="predict with the active model")
    p.add_argument("text", nargs="+", help="texts (or JSON objects for tensor models)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--in-process", action="store_true", help="load the model here, no agent")
    _add_listen(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("rollback", help="switch back to the previous install")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("serve-local", help="serve the active install, no server connection")
    _add_listen(p)
    p.add_argument("--threads", type=int)
    p.add_argument("--allow-non-loopback", action="store_true", default=None)
    p.add_argument("--batch-window-ms", type=float)
    p.set_defaults(func=cmd_serve_local)

    p = sub.add_parser("enroll", help="enroll this device with a tinyfleet server")
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--name")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--root-fingerprint", help="sha256 of the image root to pin (out of band)")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("run", help="serve and follow the server's rollouts")
    _add_listen(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="check an exported bundle offline")
    if "verify" in argv:
        # Importing verify_cli costs ~0.25 s and ~20 MB (tuf): keep it off the
        # serving path's cold start.
        from . import verify_cli

        verify_cli.add_arguments(p)
    p.set_defaults(func=cmd_verify)
    return parser


def _add_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8470)")
    p.add_argument("--unix-socket", type=Path, help="serve on / talk to a unix socket")


_CLI_KEYS = (
    "state_dir",
    "log_level",
    "listen",
    "unix_socket",
    "threads",
    "allow_non_loopback",
    "batch_window_ms",
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    cli_values = {k: getattr(args, k, None) for k in _CLI_KEYS}
    try:
        config = load_config(cli_values, config_path=args.config)
        restrict_runtimes(config.runtimes)
    except ValueError as e:  # ConfigError, or an unknown runtime name
        print(f"configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level)
    handler: Callable[[argparse.Namespace, AgentConfig], int] = args.func
    return handler(args, config)


if __name__ == "__main__":
    sys.exit(main())
