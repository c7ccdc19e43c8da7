"""Agent configuration: defaults < state_dir/agent.toml < TINYFLEET_AGENT_* env < CLI flags.

Every value is typed and validated once, here; a wrong value stops the agent
at start with a message naming the key and where it came from, instead of
failing later in the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 devices
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["DEFAULT_STATE_DIR", "AgentConfig", "ConfigError", "load_config", "parse_listen"]

DEFAULT_STATE_DIR = Path("/var/lib/tinyfleet-agent")
ENV_PREFIX = "TINYFLEET_AGENT_"
CONFIG_FILE = "agent.toml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or malformed."""


@dataclass(frozen=True)
class AgentConfig:
    """Typed agent settings (see docs/ for each key)."""

    state_dir: Path = DEFAULT_STATE_DIR
    listen: str = "127.0.0.1:8470"
    unix_socket: Path | None = None
    allow_non_loopback: bool = False
    threads: int = 1
    server: str | None = None
    poll_interval_s: float = 60.0
    telemetry_interval_s: float = 300.0
    selftest_interval_s: float = 3600.0
    # Roll back to the previous install when a periodic golden self-test fails.
    selftest_rollback: bool = False
    outbox_capacity: int = 1000
    max_body_bytes: int = 1 << 20
    batch_window_ms: float = 0.0
    log_level: str = "info"
    # Use only these inference runtimes (None: every installed one); reported to the
    # server, which then sends only bundle variants for them.
    runtimes: tuple[str, ...] | None = None
    # MQTT wake-ups (a latency hint; polling never stops): "auto" uses them when the
    # server announces a broker and paho-mqtt is installed, "on" requires paho-mqtt.
    mqtt: str = "auto"
    mqtt_url: str | None = None  # override the announced broker (e.g. a local bridge)
    mqtt_username: str | None = None  # default: the device id, when a password is set
    mqtt_password_file: Path | None = None
    mqtt_ca_file: Path | None = None

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def parse_listen(value: str) -> tuple[str, int]:
    """ "127.0.0.1:8470" / "[::1]:8470" / "localhost:0" -> (host, port).

    Raises:
        ConfigError: not host:port with a port in 0..65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen must be HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise ConfigError(f"listen: {e}") from None
    return host, int(port)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("not a number")
    return float(value)


def _opt_path(value: Any) -> Path | None:
    return Path(value) if value not in (None, "") else None


def _runtime_names(value: Any) -> tuple[str, ...] | None:
    """ "onnxruntime,litert" (environment) or ["onnxruntime"] (TOML); "" means all."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("not a list of runtime names")
    names = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    return names or None


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "state_dir": Path,
    "listen": str,
    "unix_socket": _opt_path,
    "allow_non_loopback": _bool,
    "threads": _int,
    "server": _opt_str,
    "poll_interval_s": _float,
    "telemetry_interval_s": _float,
    "selftest_interval_s": _float,
    "selftest_rollback": _bool,
    "outbox_capacity": _int,
    "max_body_bytes": _int,
    "batch_window_ms": _float,
    "log_level": str,
    "runtimes": _runtime_names,
    "mqtt": lambda v: str(v).strip().lower(),
    "mqtt_url": _opt_str,
    "mqtt_username": _opt_str,
    "mqtt_password_file": _opt_path,
    "mqtt_ca_file": _opt_path,
}
_LEVELS = ("debug", "info", "warning", "error")


def _parse(key: str, value: Any, source: str) -> Any:
    if key not in _PARSERS:
        raise ConfigError(f"unknown setting {key!r} in {source}")
    try:
        return _PARSERS[key](value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key} in {source}: {e}") from None


def _validate(config: AgentConfig) -> None:
    parse_listen(config.listen)
    checks = [
        (1 <= config.threads <= 256, "threads must be in 1..256"),
        (config.poll_interval_s >= 1, "poll_interval_s must be >= 1"),
        (config.telemetry_interval_s >= 1, "telemetry_interval_s must be >= 1"),
        (config.selftest_interval_s >= 0, "selftest_interval_s must be >= 0 (0 = off)"),
        (1 <= config.outbox_capacity <= 1_000_000, "outbox_capacity must be in 1..1000000"),
        (1024 <= config.max_body_bytes <= 1 << 30, "max_body_bytes must be in 1 KiB..1 GiB"),
        (0 <= config.batch_window_ms <= 1000, "batch_window_ms must be in 0..1000"),
        (config.log_level in _LEVELS, f"log_level must be one of {_LEVELS}"),
        (
            config.server is None or config.server.startswith(("https://", "http://")),
            "server must be an http(s) URL",
        ),
        (config.mqtt in ("auto", "on", "off"), "mqtt must be auto, on or off"),
        (
            config.mqtt_url is None or config.mqtt_url.startswith(("mqtt://", "mqtts://")),
            "mqtt_url must be an mqtt:// or mqtts:// URL",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            key = name[len(ENV_PREFIX) :].lower()
            values[key] = _parse(key, raw, f"environment variable {name}")
    return values


def _from_file(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return {key: _parse(key, value, str(path)) for key, value in data.items()}


def load_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> AgentConfig:
    """Merge defaults, the TOML file, the environment and CLI flags (None = not given).

    The file is `config_path`, else $TINYFLEET_AGENT_CONFIG, else
    `<state_dir>/agent.toml` (optional).

    Raises:
        ConfigError: an unknown key or an invalid value anywhere.
    """
    env = os.environ if env is None else env
    cli_values = {k: _parse(k, v, "command line") for k, v in (cli or {}).items() if v is not None}
    env_values = _from_env(env)
    state_dir = cli_values.get("state_dir") or env_values.get("state_dir") or DEFAULT_STATE_DIR
    explicit = config_path or _opt_path(env.get(ENV_PREFIX + "CONFIG"))
    file_values = _from_file(explicit or Path(state_dir) / CONFIG_FILE, explicit is not None)
    merged = {**file_values, **env_values, **cli_values}
    config = dataclasses.replace(AgentConfig(), **merged)
    _validate(config)
    return config
