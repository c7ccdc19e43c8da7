"""docker-compose.yml parses with docker-compose (no engine needed), configures its
services with the settings names the code reads, and holds what a working deployment
needs: a broker with the documented ACL, secrets kept out of the data volume, a worker
image with the ML extras, object storage devices can reach, and health checks."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (
    "secret_key",
    "master_key",
    "s3_access_key",
    "s3_secret_key",
    "mqtt_server_password",
    "mosquitto_passwd",
)
APP = ("web", "worker", "beat")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian package) is needed: ./scripts/system-deps.sh installs it"
    project = tmp_path_factory.mktemp("compose")
    (project / "secrets").mkdir()
    for name in SECRETS:  # compose checks that secret files exist
        (project / "secrets" / name).write_text("x")
    (project / "deploy").symlink_to(ROOT / "deploy")  # bind mounts resolve from here
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "--project-directory", project, "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_compose_file_is_valid_and_uses_known_settings(config: dict[str, Any]) -> None:
    assert {"postgres", "redis", "minio", "mosquitto", *APP} <= set(config["services"])
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    for name in APP:
        env = config["services"][name]["environment"]
        unknown = {k.removesuffix("_FILE") for k in env} - documented
        assert not unknown, f"{name} uses settings the code does not read: {unknown}"
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")


def test_it_reads_every_secret_from_a_file_outside_the_data_volume(
    config: dict[str, Any],
) -> None:
    for name in APP:
        service = config["services"][name]
        env = service["environment"]
        assert env["TINYFLEET_MASTER_KEY_FILE"] == "/run/secrets/master_key"
        assert "TINYFLEET_MASTER_KEY" not in env
        for key in ("SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "TINYFLEET_MQTT_PASSWORD"):
            assert f"{key}_FILE" in env and key not in env, (name, key)
        mounted = {s["source"] if isinstance(s, dict) else s for s in service["secrets"]}
        assert {"master_key", "secret_key", "s3_secret_key", "mqtt_server_password"} <= mounted
        assert all(not v.startswith("/data") for k, v in env.items() if k.endswith("_FILE"))


def test_the_broker_runs_the_documented_acl(config: dict[str, Any]) -> None:
    broker = config["services"]["mosquitto"]
    # docker-compose 1.29 prints short "source:target[:mode]" volume strings.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"] if v.startswith("/")}
    acl = Path(mounts["/mosquitto/config/tinyfleet.acl"]).read_text()
    docs = (ROOT / "docs" / "security.md").read_text()
    documented = re.search(r"```conf\n# /etc/mosquitto/tinyfleet\.acl\n(.*?)```", docs, re.S)
    assert documented and acl == documented.group(1)
    conf = Path(mounts["/mosquitto/config/mosquitto.conf"]).read_text()
    assert "allow_anonymous false" in conf and "acl_file /mosquitto/config/tinyfleet.acl" in conf
    env = config["services"]["web"]["environment"]
    assert env["TINYFLEET_MQTT_URL"] == "mqtt://mosquitto:1883"
    assert env["TINYFLEET_MQTT_USERNAME"] == "tinyfleet-server"  # the ACL's writer


def test_the_worker_image_has_the_ml_extras(config: dict[str, Any]) -> None:
    assert config["services"]["worker"]["build"]["target"] == "worker"
    assert config["services"]["web"]["build"]["target"] == "server"
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile.split("AS worker", 1)[1]
    extras = re.search(r"-e '\.\[([a-z,]+)\]'", stage)
    assert extras and {"torch", "tflite", "compress"} <= set(extras.group(1).split(","))
    assert "download.pytorch.org/whl/cpu" in stage  # never the CUDA build


def test_devices_reach_object_storage_by_its_public_endpoint(config: dict[str, Any]) -> None:
    minio = config["services"]["minio"]
    assert any(str(p.get("published")) == "9000" for p in minio["ports"])
    env = config["services"]["web"]["environment"]
    assert env["TINYFLEET_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["TINYFLEET_S3_PUBLIC_ENDPOINT_URL"] == "http://localhost:9000"
    assert env["TINYFLEET_PUBLIC_URL"] == "http://localhost:8000"


def test_every_long_running_service_has_a_health_check(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("postgres", "redis", "minio", "mosquitto", *APP):
        assert services[name].get("healthcheck", {}).get("test"), name
    for name in APP:
        waits = services[name]["depends_on"]
        for dependency in ("postgres", "redis", "mosquitto"):
            assert waits[dependency]["condition"] == "service_healthy", (name, dependency)
