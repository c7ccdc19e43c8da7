#!/usr/bin/env bash
# System packages the test suite drives, from Debian (never downloaded builds):
#   chromium         browser tests
#   docker-compose   validates docker-compose.yml (1.29, no engine needed)
#   mosquitto        MQTT wake-up tests (and mosquitto_passwd for the ACL test)
#   postgresql       initdb/pg_ctl for tests of PostgreSQL-only behaviour and the
#                    production-like end-to-end run (a private cluster in a temp dir)
#   redis-server     the production-like end-to-end run's Celery broker
# None of these servers has to be running: the suite starts private ones when
# DATABASE_URL / CELERY_BROKER_URL / TINYFLEET_TEST_MQTT_URL are unset (CI sets them).
# Installed with apt-get when missing and we are root; otherwise we say what to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Please install: ${missing[*]} (for example: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
