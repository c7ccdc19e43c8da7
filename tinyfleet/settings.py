"""tinyfleet settings, all from the environment (see .env.example).

Embedded default (no variables set): SQLite and artifact files under TINYFLEET_DATA_DIR,
a Celery broker on the local filesystem. Production: DATABASE_URL (PostgreSQL),
CELERY_BROKER_URL (Redis) and TINYFLEET_S3_BUCKET (S3 or MinIO).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.config import broker_visibility_timeout, read_or_create_secret
from core.env import (
    env_bool,
    env_int,
    env_list,
    env_mqtt_url,
    env_path,
    env_size,
    env_str,
    without_credentials,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("TINYFLEET_DATA_DIR", BASE_DIR / "data")
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)


def _private(path: Path, mode: int) -> None:
    """chmod what we own (an existing install may have 0755/0644 from before)."""
    try:
        if path.exists() and path.stat().st_uid == os.getuid():
            path.chmod(mode)
    except OSError:
        pass  # not ours to change: the operator chose this layout


# The data dir holds the secret key, the master key and (embedded default) the database
# with every session: nobody else on the machine may read it.
_private(DATA_DIR, 0o700)
TMP_DIR = DATA_DIR / "tmp"
TMP_DIR.mkdir(exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, or one generated once into the data dir (0600)."""
    configured = env_str("SECRET_KEY")
    if configured:
        return configured
    return read_or_create_secret(DATA_DIR / "secret_key")


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")
# The URL devices reach this server by (enroll commands, the agent download). Unset: the
# URL the operator's browser used. Set it behind a proxy or when devices use another name.
PUBLIC_URL = env_str("TINYFLEET_PUBLIC_URL")
# Where `make install` builds the agent wheel the server hands out (fleet/agent_dist.py).
AGENT_WHEEL_DIR = env_path("TINYFLEET_AGENT_WHEEL_DIR", BASE_DIR / "build" / "agent-wheel")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "ninja",
    "accounts",
    "compression",
    "fleet",
    "fleet.alerts",
    "axes",  # login rate limiting (AXES_* below)
]

MIDDLEWARE = [
    # First: unchanged device polls (the fleet's hottest request) are answered with one
    # query before sessions, CSRF and routing; everything else passes through.
    "fleet.devices.state.DeviceStateFastPath",
    "fleet.api.fastpath.TelemetryFastPath",
    # Any error under /api/ leaves as JSON (unknown paths, wrong methods, CSRF, 500s).
    "tinyfleet.api_errors.JsonApiErrors",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    # Token-authenticated API calls: per-credential rates, counted in the shared cache.
    "tinyfleet.ratelimit.ApiRateLimit",
    "compression.uploads.RequestSizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires
]

ROOT_URLCONF = "tinyfleet.urls"
WSGI_APPLICATION = "tinyfleet.wsgi.application"
ASGI_APPLICATION = "tinyfleet.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context.role",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'tinyfleet.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Embedded default: files this process creates (database and its journals, broker
    # messages, artifacts, beat schedule) are the owner's only; older ones are tightened.
    os.umask(0o077)
    _private(Path(DATABASES["default"]["NAME"]), 0o600)
    # A file-backed test database lets the real Celery worker process see test data.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
# The device fast paths run their few statements as prepared statements (fleet/fastsql.py);
# turn off behind PgBouncer < 1.21 in transaction mode.
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First: refuses logins while a username+address pair is locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "models"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True

# --- artifact storage -------------------------------------------------------------
S3_BUCKET = env_str("TINYFLEET_S3_BUCKET")
ARTIFACT_DIR = DATA_DIR / "artifacts"
if S3_BUCKET:
    # TINYFLEET_S3_ENDPOINT_URL: where the server and workers reach the store (e.g.
    # http://minio:9000 on the compose network). TINYFLEET_S3_PUBLIC_ENDPOINT_URL: where
    # devices and browsers reach it; presigned download URLs are signed for that host
    # (default: the internal endpoint, or AWS when neither is set).
    _artifact_storage = {
        "BACKEND": "compression.s3_storage.PublicEndpointS3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": env_str("TINYFLEET_S3_ENDPOINT_URL") or None,
            "public_endpoint_url": env_str("TINYFLEET_S3_PUBLIC_ENDPOINT_URL") or None,
            "addressing_style": env_str("TINYFLEET_S3_ADDRESSING_STYLE") or None,
            # SigV4 everywhere (botocore would presign SigV2 for a custom endpoint).
            "signature_version": env_str("TINYFLEET_S3_SIGNATURE_VERSION", "s3v4"),
            "region_name": env_str("TINYFLEET_S3_REGION") or None,
            "access_key": env_str("AWS_ACCESS_KEY_ID") or None,
            "secret_key": env_str("AWS_SECRET_ACCESS_KEY") or None,
            "location": env_str("TINYFLEET_S3_PREFIX", ""),
            "file_overwrite": False,
            "default_acl": None,
            "querystring_expire": env_int("TINYFLEET_S3_URL_TTL", 600, minimum=30),
        },
    }
else:
    _artifact_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": str(ARTIFACT_DIR),
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }
STORAGES = {
    "default": _artifact_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- uploads: streamed to disk, hashed on the way, capped --------------------------
MAX_UPLOAD_SIZE = env_size("TINYFLEET_MAX_UPLOAD_SIZE", 2 * 1024**3)
FILE_UPLOAD_HANDLERS = ["compression.uploads.HashingCappedUploadHandler"]
FILE_UPLOAD_TEMP_DIR = str(TMP_DIR)
FILE_UPLOAD_MAX_MEMORY_SIZE = 0
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2

# --- Celery -------------------------------------------------------------------------
JOB_TIME_LIMIT = env_int("TINYFLEET_JOB_TIME_LIMIT", 3 * 3600, minimum=60)
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
# Counters and single-flight keys every process shares (fleet/shared_state.py); default:
# the broker's Redis when the broker is Redis, else this process's memory (one node).
TINYFLEET_REDIS_URL = env_str("TINYFLEET_REDIS_URL", "")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # kombu polls the folder once a second by default and, with one worker process
        # and a prefetch of one, takes one message per poll: a backlog of small tasks
        # (rollout nudges from telemetry) queued behind a long job then delays the next
        # real one by as many seconds as there are messages (24 s for a publish, seen
        # in `make demo`). Listing a local folder ten times a second costs nothing.
        "polling_interval": 0.1,
    }
else:
    # Derived from the job time limit: Redis must not redeliver a job that is still running.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": broker_visibility_timeout(JOB_TIME_LIMIT)
    }
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "tinyfleet")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = JOB_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 30
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Task modules beside the code they run (autodiscovery finds only `<app>.tasks`).
CELERY_IMPORTS = (
    "fleet.rollout_tasks",
    "fleet.security.tasks",
    "fleet.alerts.tasks",
    "compression.chain_tasks",
)
CELERY_BEAT_SCHEDULE = {
    "reap-stale-jobs": {"task": "compression.tasks.reap_stale_jobs", "schedule": 60.0},
    "evaluate-rollouts": {"task": "fleet.rollout_tasks.evaluate_rollouts", "schedule": 30.0},
}
# A running job writes a heartbeat; one silent for this long is declared dead.
JOB_HEARTBEAT_TIMEOUT = env_int("TINYFLEET_JOB_HEARTBEAT_TIMEOUT", 900, minimum=10)

# --- archives -------------------------------------------------------------------------
ARCHIVE_MAX_MEMBERS = env_int("TINYFLEET_ARCHIVE_MAX_MEMBERS", 10_000, minimum=1)
ARCHIVE_MAX_UNCOMPRESSED = env_size("TINYFLEET_ARCHIVE_MAX_UNCOMPRESSED", 8 * 1024**3)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Content-Security-Policy: our own origin only (htmx, Chart.js and the API docs are
# vendored; pages carry no inline scripts or styles, see static/js/app.js).
_SELF, _NONE = "'self'", "'none'"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [_SELF],
        "script-src": [_SELF],
        "style-src": [_SELF],
        "img-src": [_SELF, "data:"],  # Swagger UI's icons are data: URIs
        "connect-src": [_SELF],
        "font-src": [_SELF],
        "object-src": [_NONE],
        "base-uri": [_SELF],
        "form-action": [_SELF],
        "frame-ancestors": [_NONE],
    }
}

# --- login rate limiting (django-axes): after AXES_FAILURE_LIMIT failed logins for one
# username from one address, that pair is locked out for the cool-off time (429).
AXES_FAILURE_LIMIT = env_int("TINYFLEET_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("TINYFLEET_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

# --- API rate limiting (tinyfleet/ratelimit.py); "" turns one off.
API_RATE_LIMIT = env_str("TINYFLEET_API_RATE_LIMIT", "600/m")
DEVICE_RATE_LIMIT = env_str("TINYFLEET_DEVICE_RATE_LIMIT", "240/m")
ENROLL_RATE_LIMIT = env_str("TINYFLEET_ENROLL_RATE_LIMIT", "30/m")
# Counts must be shared by every web worker: Redis when there is one (production), else
# files in the data dir (the embedded default runs two gunicorn workers).
CACHE_URL = env_str("TINYFLEET_CACHE_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else ""
)
if CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "tinyfleet",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

# --- fleet ----------------------------------------------------------------------------
DEVICE_POLL_INTERVAL = env_int("TINYFLEET_DEVICE_POLL_INTERVAL", 30, minimum=1)
# A device is online while it polled within this many seconds, offline up to the stale
# limit, and stale beyond it.
DEVICE_ONLINE_SECONDS = env_int("TINYFLEET_DEVICE_ONLINE_SECONDS", 120, minimum=1)
DEVICE_STALE_SECONDS = env_int("TINYFLEET_DEVICE_STALE_SECONDS", 24 * 3600, minimum=1)
# No enrollment token lives longer than this (the API refuses longer or never-expiring).
ENROLLMENT_TOKEN_MAX_HOURS = env_int("TINYFLEET_ENROLLMENT_TOKEN_MAX_HOURS", 24 * 7, minimum=1)

# --- device push: optional MQTT wake-ups (unset = devices only poll) ------------------
# The server publishes a tiny hint on tinyfleet/devices/<id> when a device's desired state
# changes; devices then poll at once. Credentials may sit in the URL or in the two
# variables below (which win; each also has a _FILE variant).
MQTT_URL = env_mqtt_url("TINYFLEET_MQTT_URL")
MQTT_USERNAME = env_str("TINYFLEET_MQTT_USERNAME")
MQTT_PASSWORD = env_str("TINYFLEET_MQTT_PASSWORD")
MQTT_CA_FILE = env_str("TINYFLEET_MQTT_CA_FILE")  # mqtts: CA bundle (default: system CAs)
# What devices are told to connect to (their network may reach the broker by another
# name); never carries credentials. Default: TINYFLEET_MQTT_URL without them.
MQTT_DEVICE_URL = without_credentials(env_mqtt_url("TINYFLEET_MQTT_DEVICE_URL") or MQTT_URL)

# --- bundle security: keys, TUF metadata, encryption ---------------------------------
# Every private signing key and bundle content key is sealed under this master key.
# Production must provide it (TINYFLEET_MASTER_KEY or TINYFLEET_MASTER_KEY_FILE: 32+
# random bytes as 64 hex characters or base64); the embedded default generates one once
# into MASTER_KEY_PATH (0600) and logs a warning.
MASTER_KEY = env_str("TINYFLEET_MASTER_KEY")
MASTER_KEY_PATH = DATA_DIR / "master.key"
MASTER_KEY_SOURCE = (
    "TINYFLEET_MASTER_KEY_FILE"
    if os.environ.get("TINYFLEET_MASTER_KEY_FILE")
    else "TINYFLEET_MASTER_KEY"
    if MASTER_KEY
    else "generated"
)
# k-of-n root keys for the image repository and for the director.
ROOT_KEYS = env_int("TINYFLEET_ROOT_KEYS", 3, minimum=1)
ROOT_THRESHOLD = env_int("TINYFLEET_ROOT_THRESHOLD", 2, minimum=1)
if ROOT_THRESHOLD > ROOT_KEYS:
    raise ImproperlyConfigured("TINYFLEET_ROOT_THRESHOLD must not exceed TINYFLEET_ROOT_KEYS")
# Lifetimes of signed metadata, in seconds. The beat task re-signs a role once less than
# half of its lifetime is left, and the timestamp whenever it is older than
# TIMESTAMP_REFRESH, so devices that can reach the server never see expired metadata.
METADATA_EXPIRY = {
    "root": env_int("TINYFLEET_ROOT_EXPIRY", 365 * 86400, minimum=3600),
    "targets": env_int("TINYFLEET_TARGETS_EXPIRY", 90 * 86400, minimum=3600),
    "snapshot": env_int("TINYFLEET_SNAPSHOT_EXPIRY", 7 * 86400, minimum=600),
    "timestamp": env_int("TINYFLEET_TIMESTAMP_EXPIRY", 86400, minimum=300),
    "director-targets": env_int("TINYFLEET_DIRECTOR_TARGETS_EXPIRY", 7 * 86400, minimum=600),
}
TIMESTAMP_REFRESH = env_int("TINYFLEET_TIMESTAMP_REFRESH", 3600, minimum=60)
METADATA_REFRESH_INTERVAL = env_int("TINYFLEET_METADATA_REFRESH_INTERVAL", 600, minimum=10)
CELERY_BEAT_SCHEDULE["refresh-tuf-metadata"] = {
    "task": "fleet.tasks.refresh_metadata",
    "schedule": float(METADATA_REFRESH_INTERVAL),
}
# How bundles are encrypted and which CPUs they claim to run on (the agent refuses others).
BUNDLE_CIPHER = env_str("TINYFLEET_BUNDLE_CIPHER", "aes-256-gcm")
if BUNDLE_CIPHER not in ("aes-256-gcm", "chacha20-poly1305"):
    raise ImproperlyConfigured("TINYFLEET_BUNDLE_CIPHER must be aes-256-gcm or chacha20-poly1305")
BUNDLE_CHUNK_SIZE = env_size("TINYFLEET_BUNDLE_CHUNK_SIZE", 1024 * 1024)
BUNDLE_ARCH = env_list("TINYFLEET_BUNDLE_ARCH", ["x86_64", "aarch64"])
BUNDLE_MIN_RUNTIME = {
    "onnxruntime": env_str("TINYFLEET_MIN_ONNXRUNTIME", "1.17"),
    "litert": env_str("TINYFLEET_MIN_LITERT", "1.0"),
}

# Telemetry: raw batches are kept for a short while (rebuilds, audits); the hourly and
# daily rollups that dashboards and gates read are kept much longer. Enforced hourly in
# bounded batches.
TELEMETRY_RAW_RETENTION_DAYS = env_int("TINYFLEET_TELEMETRY_RAW_RETENTION_DAYS", 14, minimum=1)
TELEMETRY_ROLLUP_RETENTION_DAYS = env_int(
    "TINYFLEET_TELEMETRY_ROLLUP_RETENTION_DAYS", 400, minimum=TELEMETRY_RAW_RETENTION_DAYS
)
# "deferred" (default) stores each batch raw and a Celery task folds pending batches in
# bulk every few seconds, partitioned so several workers fold at once (cheap requests;
# dashboards and gates lag by up to the fold interval). "ingest" adds each batch to the
# rollups inside its request.
TELEMETRY_FOLD = env_str("TINYFLEET_TELEMETRY_FOLD", "deferred")
if TELEMETRY_FOLD not in ("ingest", "deferred"):
    raise ImproperlyConfigured(
        f"TINYFLEET_TELEMETRY_FOLD must be 'ingest' or 'deferred', not {TELEMETRY_FOLD!r}"
    )
TELEMETRY_FOLD_INTERVAL = env_int("TINYFLEET_TELEMETRY_FOLD_INTERVAL", 5, minimum=1)
if TELEMETRY_FOLD == "deferred":
    CELERY_BEAT_SCHEDULE["telemetry-fold"] = {
        "task": "fleet.tasks.fold_telemetry",
        "schedule": float(TELEMETRY_FOLD_INTERVAL),
    }
CELERY_BEAT_SCHEDULE["telemetry-retention"] = {
    "task": "fleet.tasks.enforce_telemetry_retention",
    "schedule": 3600.0,
}

# --- alerts: rules evaluated by beat, delivered by signed webhook and e-mail ----------
ALERT_EVALUATION_INTERVAL = env_int("TINYFLEET_ALERT_EVALUATION_INTERVAL", 60, minimum=1)
ALERT_MAX_ATTEMPTS = env_int("TINYFLEET_ALERT_MAX_ATTEMPTS", 6, minimum=1)
# Retries wait base, 2 x base, 4 x base ... seconds (capped at an hour).
ALERT_RETRY_BASE_SECONDS = env_int("TINYFLEET_ALERT_RETRY_BASE_SECONDS", 30, minimum=1)
CELERY_BEAT_SCHEDULE["evaluate-alerts"] = {
    "task": "fleet.alerts.tasks.evaluate_alerts",
    "schedule": float(ALERT_EVALUATION_INTERVAL),
}
# E-mail through Django's mail settings. Without EMAIL_HOST (the embedded default)
# messages are written as files into DATA_DIR/mail, so nothing is lost and `make run`
# needs no mail server.
EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
    EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(DATA_DIR / "mail")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "tinyfleet@localhost")
