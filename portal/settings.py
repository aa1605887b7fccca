"""Haven's settings: the one module that reads the environment.

Embedded defaults need no server (SQLite, kombu's filesystem broker, the in-memory
channel layer, a local storage directory, all under ``HAVEN_DATA_DIR``). Production
values come from ``DATABASE_URL``, ``REDIS_URL``, ``AZURE_STORAGE_CONNECTION_STRING`` and
friends; docs/configuration.md lists every variable. A bad value raises ``SettingError``
naming the variable, which ``manage.py`` turns into a one-line message.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

from agents.runtime import protocol
from portal.env import (
    SettingError,
    azure_connection_string,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("HAVEN_DATA_DIR", str(BASE_DIR / "var"))).expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if len(key) < 50 or len(set(key)) < 5:
            raise SettingError(
                "SECRET_KEY", "must be at least 50 characters with at least 5 distinct ones"
            )
        return key
    # Embedded default: a random key generated once and kept in the data directory, so
    # sessions survive restarts and no two installations share a key. Written to a private temporary file created with its final mode (no moment when
    # another local user could read it), then linked into place: link fails if the key
    # exists, so two processes starting together agree on one key, and none reads it half
    # written.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        draft = DATA_DIR / f".secret_key.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(64))
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink(missing_ok=True)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# A generated key is this host's alone: portals sharing a database need one given to all
# (portal.checks warns; docs/configuration.md, "Running more than one portal").
SECRET_KEY_GENERATED = not env_str("SECRET_KEY")
# Earlier keys still accepted while SECRET_KEY changes (comma-separated; a secret: _FILE).
SECRET_KEY_FALLBACKS = [
    k.strip() for k in (env_str("SECRET_KEY_FALLBACKS") or "").split(",") if k.strip()
]
# The portal's Ed25519 signing key (portal.signing); unset, it is kept in the database.
HAVEN_SIGNING_KEY = env_str("HAVEN_SIGNING_KEY")
DEBUG = env_bool("HAVEN_DEBUG", False)
HTTPS = env_bool("HAVEN_HTTPS", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if not _origin.startswith(("http://", "https://")):
        raise SettingError(
            "CSRF_TRUSTED_ORIGINS", f"{_origin!r} must start with http:// or https://"
        )

HAVEN_PORT = env_int("HAVEN_PORT", 8000, minimum=1)
HAVEN_PUBLIC_URL = env_url(
    "HAVEN_PUBLIC_URL", schemes=("http", "https"), default=f"http://127.0.0.1:{HAVEN_PORT}"
).rstrip("/")
# Where processes on this host (the portal worker) reach the portal's own HTTP server.
HAVEN_INTERNAL_URL = env_url(
    "HAVEN_INTERNAL_URL", schemes=("http", "https"), default=f"http://127.0.0.1:{HAVEN_PORT}"
).rstrip("/")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "portal",
    "vaults",
    "agents",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # First, so every response carries the policy, even a refusal from a middleware below.
    "portal.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "portal.middleware.RefuseNulCharacters",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Where vaults.activity.record finds the client address and the user of the request.
    "vaults.activity.RequestMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # The second factor before the one-time password: its page is the only one it leaves.
    "portal.middleware.TwoFactorMiddleware",
    "portal.middleware.PasswordChangeRequiredMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
AUTH_USER_MODEL = "portal.User"
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "portal:login"

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
                "portal.context_processors.shell",
            ],
        },
    }
]

# --- Bounds per portal process (docs/configuration.md, "Sizing connections") ------------
# Requests inside Django at once: each runs on its own thread (asgiref gives every request
# its own), holding at most one database connection. Past it a request waits up to
# HAVEN_PORTAL_QUEUE_SECONDS, then is answered 503 with Retry-After (portal.concurrency).
HAVEN_PORTAL_CONCURRENCY = env_int("HAVEN_PORTAL_CONCURRENCY", 16, minimum=1)
HAVEN_PORTAL_QUEUE_SECONDS = env_float("HAVEN_PORTAL_QUEUE_SECONDS", 5.0, minimum=0)
HAVEN_PORTAL_RETRY_AFTER = env_int("HAVEN_PORTAL_RETRY_AFTER", 5, minimum=1)
# PostgreSQL connections per process (a psycopg pool): the requests above, the websockets'
# thread and the agent API's token checks share it; a thread that finds it empty waits
# HAVEN_DB_POOL_TIMEOUT seconds, then its request is answered 503 with Retry-After.
HAVEN_DB_POOL_SIZE = env_int("HAVEN_DB_POOL_SIZE", 22, minimum=1)
HAVEN_DB_POOL_MIN = env_int("HAVEN_DB_POOL_MIN", 0, minimum=0)
if HAVEN_DB_POOL_MIN > HAVEN_DB_POOL_SIZE:
    raise SettingError("HAVEN_DB_POOL_MIN", "cannot be larger than HAVEN_DB_POOL_SIZE")
HAVEN_DB_POOL_TIMEOUT = env_float("HAVEN_DB_POOL_TIMEOUT", 10.0, minimum=0.1)
# Redis connections per process, for each of the cache, the channel layer and the Celery
# producer; a caller that finds its pool empty waits HAVEN_REDIS_POOL_TIMEOUT seconds.
HAVEN_REDIS_POOL_SIZE = env_int("HAVEN_REDIS_POOL_SIZE", 10, minimum=1)
HAVEN_REDIS_POOL_TIMEOUT = env_float("HAVEN_REDIS_POOL_TIMEOUT", 5.0, minimum=0.1)

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "sqlite"))
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    except ValueError as exc:
        raise SettingError("DATABASE_URL", str(exc)) from exc
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Not persistent connections (one per thread, and asgiref makes a thread per
        # request): a bounded pool that each request borrows from and gives back.
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": HAVEN_DB_POOL_MIN,
            "max_size": HAVEN_DB_POOL_SIZE,
            "timeout": HAVEN_DB_POOL_TIMEOUT,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "haven.sqlite3",
            "OPTIONS": {
                # The portal, its worker and beat share one file: wait for locks rather
                # than fail, and let readers run beside a writer.
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # One test database per test run, so runs side by side do not collide.
            "TEST": {"NAME": DATA_DIR / f"test-haven-{os.getpid()}.sqlite3"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, channel layer, cache ------------------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss"))
# Web server processes on the portal's port (portal.serve; manage.py haven_run). Several
# need Redis: the in-memory channel layer reaches only its own process's sockets.
HAVEN_PORTAL_PROCESSES = env_int(
    "HAVEN_PORTAL_PROCESSES", (os.cpu_count() or 1) if REDIS_URL else 1, minimum=1
)
if HAVEN_PORTAL_PROCESSES > 1 and not REDIS_URL:
    raise SettingError(
        "HAVEN_PORTAL_PROCESSES",
        "more than one web process needs REDIS_URL (without Redis live updates reach only "
        "the process that serves the page)",
    )
# The address agents on other machines use to reach Redis (host name rather than loopback).
HAVEN_AGENT_BROKER_URL = env_url("HAVEN_AGENT_BROKER_URL", schemes=("redis", "rediss"))
BROKER_DIR = DATA_DIR / "broker"
# Pushes a socket may have waiting in the in-memory layer before more are dropped (Channels'
# default, 100, is half a second of a vault with 200 live jobs): a few seconds of a busy
# vault. (The Redis pub/sub layer keeps no backlog to bound.)
LIVE_SOCKET_CAPACITY = 2000
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    # Publishing threads share at most two broker connections (each publishes over one Redis
    # connection at a time); a third waits for one to come back.
    CELERY_BROKER_POOL_LIMIT = 2
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub: one PUBLISH a push, one subscribed connection per process
            # (portal.pools.PubSubChannelLayer; two connections per event loop).
            "BACKEND": "portal.pools.PubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL}]},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "pool_class": "portal.pools.SharedBlockingConnectionPool",
                "max_connections": HAVEN_REDIS_POOL_SIZE,
                "timeout": HAVEN_REDIS_POOL_TIMEOUT,
            },
        }
    }
else:
    for _sub in ("queue", "processed", "control"):
        (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, writing each message whole before it appears
    # (portal.embedded_broker). The host is meaningless to it; naming it spares every
    # process kombu's "No hostname was supplied" warning at start-up.
    CELERY_BROKER_URL = "haven-filesystem://localhost//"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": LIVE_SOCKET_CAPACITY},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

CELERY_TASK_DEFAULT_QUEUE = "portal"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ALWAYS_EAGER = env_bool("HAVEN_TASKS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True

# --- Backup storage -------------------------------------------------------------------
AZURE_STORAGE_CONNECTION_STRING = azure_connection_string("AZURE_STORAGE_CONNECTION_STRING")
STORAGE_DIR = Path(env_str("HAVEN_STORAGE_DIR", str(DATA_DIR / "storage"))).expanduser().resolve()
# Where a geo-redundant vault's secondary copy goes (docs/storage-backends.md): a second
# Azure account, or (local primary) a second directory; none at all leaves GRS unavailable.
SECONDARY_STORAGE_CONNECTION_STRING = azure_connection_string(
    "HAVEN_SECONDARY_STORAGE_CONNECTION_STRING"
)
_secondary_dir = env_str("HAVEN_SECONDARY_STORAGE_DIR", str(DATA_DIR / "storage-secondary"))
SECONDARY_STORAGE_DIR = Path(_secondary_dir).expanduser() if _secondary_dir else None
# Replication (jobs.services.replication): how often the worker looks for new blobs, and
# the lag (oldest blob not yet copied) above which a machine gets a Warning alert.
HAVEN_REPLICATION_INTERVAL_SECONDS = env_int("HAVEN_REPLICATION_INTERVAL_SECONDS", 60, minimum=10)
HAVEN_REPLICATION_LAG_ALERT_MINUTES = env_int("HAVEN_REPLICATION_LAG_ALERT_MINUTES", 60, minimum=1)
HAVEN_REGIONS = env_list(
    "HAVEN_REGIONS",
    ["West Europe", "North Europe", "East US", "West US 2", "UK South", "Southeast Asia"],
)

# --- Request bodies (agents/runtime/protocol.py; portal/gate.py refuses before reading) --
DATA_UPLOAD_MAX_MEMORY_SIZE = protocol.MAX_JSON_BODY

# --- Jobs, alerts and retention (docs/jobs.md) -----------------------------------------
HAVEN_JOB_PICKUP_SECONDS = env_int("HAVEN_JOB_PICKUP_SECONDS", 60, minimum=1)
HAVEN_JOB_AGENT_WAIT_MINUTES = env_int("HAVEN_JOB_AGENT_WAIT_MINUTES", 60, minimum=1)
HAVEN_JOB_STALL_SECONDS = env_int("HAVEN_JOB_STALL_SECONDS", 120, minimum=10)
# Offline seeding (docs/seeding.md): the folder on the portal's host under which the portal's
# Import seed page may read seeds; empty: only manage.py seed_import imports.
HAVEN_SEED_IMPORT_ROOT = env_str("HAVEN_SEED_IMPORT_ROOT", "")
HAVEN_ALERT_NO_BACKUP_DAYS = env_int("HAVEN_ALERT_NO_BACKUP_DAYS", 3, minimum=1)
HAVEN_ALERT_EMAIL = env_str("HAVEN_ALERT_EMAIL", "each")
if HAVEN_ALERT_EMAIL not in ("each", "digest", "off"):
    raise SettingError(
        "HAVEN_ALERT_EMAIL", f"expected each, digest or off, got {HAVEN_ALERT_EMAIL!r}"
    )
# Alert webhooks POST only to public addresses, and to these networks (jobs.services.egress).
HAVEN_WEBHOOK_ALLOWED_NETWORKS = env_networks("HAVEN_WEBHOOK_ALLOWED_NETWORKS")
# How long a webhook's host name lookup may take, when it is saved and at each send.
HAVEN_WEBHOOK_RESOLVE_SECONDS = env_float("HAVEN_WEBHOOK_RESOLVE_SECONDS", 3.0, minimum=0.1)
# A shorter grace could collect the packs of a backup the portal lost track of.
HAVEN_GC_GRACE_HOURS = env_int("HAVEN_GC_GRACE_HOURS", 24, minimum=24)
# Compaction (jobs/services/compaction.py): a pack whose dead share is above this percentage
# is rewritten (and small packs are merged).
HAVEN_COMPACT_THRESHOLD_PERCENT = env_int("HAVEN_COMPACT_THRESHOLD_PERCENT", 20, minimum=1)
if HAVEN_COMPACT_THRESHOLD_PERCENT > 95:
    raise SettingError(
        "HAVEN_COMPACT_THRESHOLD_PERCENT",
        f"must be at most 95, got {HAVEN_COMPACT_THRESHOLD_PERCENT}",
    )
HAVEN_AGENT_MIN_CACHE_FREE_MB = env_int("HAVEN_AGENT_MIN_CACHE_FREE_MB", 256, minimum=0)
HAVEN_AGENT_OFFLINE_SECONDS = env_int("HAVEN_AGENT_OFFLINE_SECONDS", 180, minimum=30)

# --- Sign-in throttling (portal/throttle.py): a growing pause per (user name, address) ---
HAVEN_SIGNIN_FAILURE_LIMIT = env_int("HAVEN_SIGNIN_FAILURE_LIMIT", 5, minimum=1)
HAVEN_SIGNIN_COOLOFF_MINUTES = env_int("HAVEN_SIGNIN_COOLOFF_MINUTES", 15, minimum=1)
# The reverse proxies whose forwarded-address header is believed (addresses or networks);
# from any other peer the header is ignored and REMOTE_ADDR is the client.
HAVEN_TRUSTED_PROXIES = env_networks("HAVEN_TRUSTED_PROXIES")
HAVEN_PROXY_HEADER = env_str("HAVEN_PROXY_HEADER", "X-Forwarded-For")
HAVEN_PROXY_HEADER_META = "HTTP_" + HAVEN_PROXY_HEADER.upper().replace("-", "_")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- REST API for people (/api/v1/; portal/api, docs/api.md) ---------------------------
# Requests per minute one user (token or session) may make; past it, 429 with Retry-After.
HAVEN_API_RATE_PER_MINUTE = env_int("HAVEN_API_RATE_PER_MINUTE", 600, minimum=1)
# Two-factor sign-in (portal.two_factor). Failed codes are counted by portal.throttle, with
# the same limits and message as passwords, so django-otp's own per-device delay is off.
OTP_TOTP_ISSUER = "Haven"
OTP_TOTP_THROTTLE_FACTOR = 0

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.api.auth.TokenAuthentication",
        "portal.api.auth.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["portal.api.auth.UserRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Haven API",
    "DESCRIPTION": "The REST API for people: vaults, machines, policies, jobs, restores. "
    "Authenticate with a personal access token (`Authorization: Bearer hvn_...`) "
    "or, in the browser, with your session. See docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobOperationEnum": "jobs.models.Job.Operation",
        "JobTriggerEnum": "jobs.models.Job.Trigger",
        "ActivityOperationEnum": "vaults.models.ActivityEntry.Operation",
        "AlertKindEnum": "jobs.models.Alert.Kind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api.schema.add_error_responses",
    ],
    "SCHEMA_PATH_PREFIX": "/api/v1",
}

# --- Email ----------------------------------------------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
    if EMAIL_USE_TLS and EMAIL_USE_SSL:
        raise SettingError("EMAIL_USE_SSL", "cannot be true together with EMAIL_USE_TLS")
else:
    # Without a mail server, mail lands as files an operator can read.
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = DATA_DIR / "mail"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Haven <haven@localhost>")

# --- Static files, i18n ---------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("HAVEN_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Security -------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("HAVEN_SESSION_HOURS", 12, minimum=1) * 3600
X_FRAME_OPTIONS = "DENY"
# No inline script or style anywhere (templates load static/js and static/css only); htmx
# is told not to inject its indicator style (static/js/htmx-config.js). Websockets go to
# the same host, which 'self' covers (CSP level 3).
HAVEN_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "object-src": ["'none'"],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if HTTPS:
    SECURE_SSL_REDIRECT = env_bool("HAVEN_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HAVEN_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"quiet_pool_timeouts": {"()": "portal.concurrency.QuietPoolTimeouts"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HAVEN_LOG_LEVEL", "INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "django.request": {"filters": ["quiet_pool_timeouts"]},
        # The Azure SDK logs every request at INFO.
        "azure": {"level": "WARNING"},
    },
}
