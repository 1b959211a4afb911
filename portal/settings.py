"""The one settings module. Everything that differs between machines is an environment variable.

The embedded default (no variables at all, `DJANGO_DEBUG=true` as `make run` sets it) runs on
SQLite, keeps objects in a local folder, runs tasks in-process and prints e-mail to the console.
The full stack is the same code with DATABASE_URL, REDIS_URL, S3_* and EMAIL_URL set.
See `.env.example` for every variable.
"""

from __future__ import annotations

import re
import socket
from datetime import timedelta
from pathlib import Path

import dj_database_url
from botocore.config import Config as BotoConfig
from django.core.exceptions import ImproperlyConfigured

from portal.env import (
    dev_secret,
    email_settings,
    env_bool,
    env_int,
    env_list,
    env_secret,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state of the embedded default: SQLite file, generated dev keys, local objects, spool.
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)


def _required_secret(name: str, *, min_length: int) -> str:
    """A secret that production must set; the embedded default (DEBUG) keeps one locally."""
    value = env_secret(name, min_length=min_length)
    if value is not None:
        return value
    if DEBUG:
        return dev_secret(VAR_DIR / "dev-secrets" / name.lower())
    raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set outside DJANGO_DEBUG mode")


SECRET_KEY = _required_secret("DJANGO_SECRET_KEY", min_length=50)
# Former keys, comma-separated, while a rotation settles: sessions, links and sealed MFA keys
# made under them still open.
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "django_celery_beat",
    # Ours, from the lowest floor up: a lower app never imports a higher one.
    "audit",
    "accounts",
    "facilities",
    "studies",
    "consent",
    "sharing",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "portal.middleware.SessionLifetimeMiddleware",
    "portal.middleware.StaffMFARequiredMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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
                "portal.context_processors.navigation",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 3
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "portal.sqlite3"),
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (rate limits of logins, codes and tokens must be shared by every web process) ------
REDIS_URL = env_str("REDIS_URL")
CACHE_URL = env_str("CACHE_URL", REDIS_URL)
if CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "portal"),
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Accounts, sessions, MFA ----------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "portal:home"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"

ACCOUNT_ADAPTER = "portal.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = True
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_SESSION_REMEMBER = False
ACCOUNT_REAUTHENTICATION_TIMEOUT = env_int("PORTAL_REAUTHENTICATION_SECONDS", 300)
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Imaging portal] "
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    # After five wrong passwords for one address, that address waits five minutes.
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "confirm_email": "1/3m/key",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "reauthenticate": "10/m/user",
    "change_password": "5/m/user",
}
MFA_ADAPTER = "portal.adapters.MFAAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
# Security keys and passkeys need a secure origin; plain-HTTP localhost is allowed only in DEBUG.
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
MFA_TOTP_ISSUER = "Imaging Consent Portal"
MFA_RECOVERY_CODE_COUNT = 10

# Idle timeouts (staff at a shared front-desk tablet get the short one) and an absolute
# lifetime after which everyone signs in again, however active.
PORTAL_STAFF_IDLE_TIMEOUT = timedelta(minutes=env_int("PORTAL_STAFF_IDLE_MINUTES", 15))
PORTAL_PATIENT_IDLE_TIMEOUT = timedelta(minutes=env_int("PORTAL_PATIENT_IDLE_MINUTES", 30))
PORTAL_SESSION_LIFETIME = timedelta(hours=env_int("PORTAL_SESSION_LIFETIME_HOURS", 12))
SESSION_COOKIE_AGE = int(PORTAL_SESSION_LIFETIME.total_seconds())
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"

PORTAL_STAFF_INVITATION_LIFETIME = timedelta(days=env_int("PORTAL_STAFF_INVITATION_DAYS", 7))

# --- HTTPS and browser security headers -------------------------------------------------------
# PORTAL_HTTPS is on unless the embedded default runs; behind a TLS-terminating proxy also set
# PORTAL_BEHIND_PROXY=true so that the proxy's X-Forwarded-Proto is believed.
PORTAL_HTTPS = env_bool("PORTAL_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = PORTAL_HTTPS
SESSION_COOKIE_SECURE = PORTAL_HTTPS
CSRF_COOKIE_SECURE = PORTAL_HTTPS
SECURE_HSTS_SECONDS = 63072000 if PORTAL_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = PORTAL_HTTPS
SECURE_HSTS_PRELOAD = PORTAL_HTTPS
if env_bool("PORTAL_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
# Nothing of our URLs reaches other sites. Not "no-referrer": under it browsers send
# `Origin: null` with every form POST, and Django's CSRF check then refuses them all.
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- Static files (WhiteNoise; no CDN) ----------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]

# --- Object store ------------------------------------------------------------------------------
# Study objects are written encrypted by `sharing`; the store itself is private and names carry
# no PHI. Without S3_BUCKET the embedded default keeps them in a local folder.
S3_BUCKET = env_str("S3_BUCKET")
if S3_BUCKET:
    OBJECT_STORE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": env_str("S3_ENDPOINT_URL") or None,
            "region_name": env_str("S3_REGION", "us-east-1"),
            "access_key": env_secret("S3_ACCESS_KEY_ID"),
            "secret_key": env_secret("S3_SECRET_ACCESS_KEY"),
            "default_acl": "private",
            "querystring_auth": True,
            "querystring_expire": 60,
            # Names are random, so they never collide; skipping the existence check saves a request.
            "file_overwrite": True,
            "signature_version": "s3v4",
            "addressing_style": env_str("S3_ADDRESSING_STYLE", "path"),
            "object_parameters": {"CacheControl": "no-store"},
            # botocore's defaults (60 s timeouts, legacy retries) would hold a worker for
            # minutes against a store that hangs; fail sooner and let the task retry.
            # (A client_config replaces the one django-storages would build, so it repeats
            # the signature version and addressing style.)
            "client_config": BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": env_str("S3_ADDRESSING_STYLE", "path")},
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                # Uploads carry Content-MD5 and objects authenticate themselves (AES-GCM), so
                # botocore's extra CRC32 of every body (its default since 1.36) only costs CPU.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        },
    }
else:
    OBJECT_STORE = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": VAR_DIR / "objects",
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": VAR_DIR / "media"},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    "objects": OBJECT_STORE,
}

# --- Nodes ---------------------------------------------------------------------------------------
# This machine's name among the portal's nodes. Each node has its own ingest spool, and the
# publish tasks for the files in it go to the queue `publish.<PORTAL_NODE>`, which only that
# node's workers consume. Every node needs a distinct name; the host name is one.
PORTAL_NODE = env_str("PORTAL_NODE") or socket.gethostname().split(".")[0]
if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", PORTAL_NODE):
    raise ImproperlyConfigured("PORTAL_NODE must be 1-64 letters, digits, '-' or '_'")

# --- Ingest ------------------------------------------------------------------------------------
# The spool holds received instances, in plaintext, until they are published encrypted. It is
# local to the node that received them: keep it on an encrypted volume, readable by the portal
# only.
INGEST_SPOOL_DIR = Path(env_str("INGEST_SPOOL_DIR", str(VAR_DIR / "spool")))
# fsync each received file before the sender is told it is stored; turn off only for benchmarks
# on throwaway data.
INGEST_SPOOL_FSYNC = env_bool("INGEST_SPOOL_FSYNC", True)
INGEST_MAX_INSTANCE_BYTES = env_int("INGEST_MAX_INSTANCE_BYTES", 2 * 1024**3)
INGEST_MAX_SEQUENCE_DEPTH = env_int("INGEST_MAX_SEQUENCE_DEPTH", 8)
# Archives (uploaded zips, bulk import): total uncompressed size and compression ratio bounds.
INGEST_MAX_ARCHIVE_BYTES = env_int("INGEST_MAX_ARCHIVE_BYTES", 20 * 1024**3)
INGEST_MAX_ARCHIVE_RATIO = env_int("INGEST_MAX_ARCHIVE_RATIO", 100)
INGEST_MAX_ARCHIVE_MEMBERS = env_int("INGEST_MAX_ARCHIVE_MEMBERS", 100_000)
# How long a spool file may sit without its index row before the sweeper removes it: longer
# than any single transaction could take.
INGEST_SPOOL_ORPHAN_AFTER_SECONDS = env_int("INGEST_SPOOL_ORPHAN_AFTER_SECONDS", 3600)
# The DIMSE receiver (manage.py dicom_listener).
DICOM_LISTENER_AE_TITLE = env_str("DICOM_LISTENER_AE_TITLE", "IMAGING_PORTAL")
DICOM_LISTENER_HOST = env_str("DICOM_LISTENER_HOST", "127.0.0.1")
DICOM_LISTENER_PORT = env_int("DICOM_LISTENER_PORT", 11112)
DICOM_LISTENER_MAX_ASSOCIATIONS = env_int("DICOM_LISTENER_MAX_ASSOCIATIONS", 10)

# --- Encrypted store: keys and publishing --------------------------------------------------------
# The keyring of key-encryption keys (see sharing/keys.py): a file (a mounted secret) or the
# text itself; the embedded default keeps one in var/dev-secrets/.
PORTAL_KEYRING_FILE = env_str("PORTAL_KEYRING_FILE")
PORTAL_KEYRING_TEXT = env_str("PORTAL_KEYRING") or None
# Instances a publish task claims at once: enough that broker overhead stays small, few enough
# that a batch finishes well within the claim lease.
PUBLISH_BATCH_SIZE = env_int("PUBLISH_BATCH_SIZE", 32)
# Objects up to this size are encrypted in memory and uploaded in one request the store checks
# by MD5; larger ones stream in constant memory and are read back to be checked.
PUBLISH_IN_MEMORY_MAX_BYTES = env_int("PUBLISH_IN_MEMORY_MAX_BYTES", 32 * 1024**2)
# Instances each worker process encrypts and uploads at once (threads; 1: one after another in
# the task's own thread). The store's answer is mostly waiting, so a few overlap well; each
# holds up to PUBLISH_IN_MEMORY_MAX_BYTES of ciphertext while it is sent.
PUBLISH_UPLOADS_IN_FLIGHT = env_int("PUBLISH_UPLOADS_IN_FLIGHT", 4)
# A claim not finished after this long is released by the sweeper (its worker died).
PUBLISH_CLAIM_LEASE_SECONDS = env_int("PUBLISH_CLAIM_LEASE_SECONDS", 900)
# Instances waiting this long with no task (a lost queue) get one from the sweeper.
PUBLISH_REQUEUE_AFTER_SECONDS = env_int("PUBLISH_REQUEUE_AFTER_SECONDS", 120)
PUBLISH_PENDING_TTL = 300
# Retries while the store or the database is down: backoff 1, 2, 4... capped, then the sweeper.
PUBLISH_MAX_RETRIES = env_int("PUBLISH_MAX_RETRIES", 50)
PUBLISH_RETRY_MAX_SECONDS = env_int("PUBLISH_RETRY_MAX_SECONDS", 30)
# Where consent keeps signed authorizations: encrypted like study data (consent/documents.py).
CONSENT_DOCUMENT_VAULT = "sharing.documents.EncryptedDocumentVault"

# --- Share links (sharing/links.py) -------------------------------------------------------------
# How long a new link works unless the patient chooses otherwise, and the longest they may
# choose; never past the consent grant it reads under.
LINK_DEFAULT_DAYS = env_int("LINK_DEFAULT_DAYS", 14)
LINK_MAX_DAYS = env_int("LINK_MAX_DAYS", 90)
# The e-mailed one-time code: how long it works and how many tries it allows.
LINK_CODE_VALIDITY_SECONDS = env_int("LINK_CODE_VALIDITY_SECONDS", 600)
LINK_CODE_MAX_ATTEMPTS = env_int("LINK_CODE_MAX_ATTEMPTS", 5)
# Guessing, within each window: wrong codes per link and per client address, codes e-mailed per
# link and per address, and refused link tokens per address. Past a limit the link's code step
# (or the address) is refused until the window ends.
LINK_GUESS_WINDOW_SECONDS = env_int("LINK_GUESS_WINDOW_SECONDS", 3600)
LINK_CODE_FAILURES_PER_LINK = env_int("LINK_CODE_FAILURES_PER_LINK", 10)
LINK_CODE_FAILURES_PER_ADDRESS = env_int("LINK_CODE_FAILURES_PER_ADDRESS", 20)
LINK_CODE_SENDS_PER_LINK = env_int("LINK_CODE_SENDS_PER_LINK", 5)
LINK_CODE_SENDS_PER_ADDRESS = env_int("LINK_CODE_SENDS_PER_ADDRESS", 10)
LINK_TOKEN_GUESSES_PER_ADDRESS = env_int("LINK_TOKEN_GUESSES_PER_ADDRESS", 20)
# A browser that proved the code reads the link this long before it is asked again.
LINK_SESSION_HOURS = env_int("LINK_SESSION_HOURS", 8)
# The recipient is warned this many days before a link expires (hourly beat task).
LINK_EXPIRY_WARNING_DAYS = env_int("LINK_EXPIRY_WARNING_DAYS", 3)
# The patient hears of downloads through one link at most once in this many minutes.
LINK_DOWNLOAD_NOTICE_MINUTES = env_int("LINK_DOWNLOAD_NOTICE_MINUTES", 60)

# --- Celery ------------------------------------------------------------------------------------
# Without REDIS_URL tasks run in-process (embedded default); with it, separate workers and beat.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 3600
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker that loses the broker lets running tasks finish: what they do is recorded in the
# database, not the broker (a publish batch's claims), and the sweeper requeues the rest.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A task that has not finished when the visibility timeout passes is delivered again, so every
# hard time limit stays well below it.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_connect_timeout": 2,
}
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 1800)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
if CELERY_VISIBILITY_TIMEOUT <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_TASK_TIME_LIMIT must be below CELERY_VISIBILITY_TIMEOUT")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "spool-sweep": {"task": "studies.spool_sweep", "schedule": timedelta(minutes=15)},
    "publish-sweep": {"task": "sharing.publish_sweep", "schedule": timedelta(minutes=1)},
    "retention-sweep": {"task": "sharing.retention_sweep", "schedule": timedelta(days=1)},
    "share-link-expiry-warnings": {
        "task": "sharing.share_link_expiry_warnings",
        "schedule": timedelta(hours=1),
    },
}
CELERY_TIMEZONE = "UTC"

# --- E-mail -----------------------------------------------------------------------------------
globals().update(email_settings(env_str("EMAIL_URL", "console://")))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Imaging portal <no-reply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Locale -----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("PORTAL_TIME_ZONE", "America/New_York")
USE_I18N = True
USE_TZ = True

# --- Logging: structured lines to stderr; never PHI (see DESIGN.md, rule 5) ---------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Request lines name paths only; paths carry opaque ids, never UIDs or MRNs.
        "django.request": {"level": "WARNING"},
        "django.security": {"level": "WARNING"},
    },
}
