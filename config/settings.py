"""Surge settings: every knob comes from the environment (see .env.example).

Development defaults work on a laptop with nothing configured. Production mode
(`DJANGO_DEBUG=false`) refuses to start without a real secret key and allowed hosts.
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# A module, not its constant: every upper-case name here becomes a Django setting.
from config import celery as celery_config

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=DEV_SECRET_KEY)
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)

if not DEBUG:
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured(
            "DJANGO_DEBUG=false needs DJANGO_SECRET_KEY set to a real secret (32+ characters)."
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DJANGO_DEBUG=false needs DJANGO_ALLOWED_HOSTS.")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "tasks",
    "apps.core",
    "apps.accounts",
    "apps.ops",
    "apps.coupons",
    "apps.wallets",
    "apps.orders",
    "apps.notifications",
    "apps.emails",
    "apps.chat",
]
# The lab (apps/lab): the naive, synchronous and ablation variants and the no-op baselines
# the bench compares Surge against. Installed and routed only with this on (bench/stack.py
# sets it); never on in a real deployment. The production apps import nothing from it.
LAB_ENABLED = env.bool("LAB_ENABLED", default=False)
if LAB_ENABLED:
    INSTALLED_APPS.append("apps.lab")

MIDDLEWARE = [
    "apps.core.middleware.RequestIdMiddleware",
    "apps.core.middleware.ApiJsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

# Every route is spelled with its trailing slash; redirecting a POST would lose its body
# (and raises in DEBUG), so a missing slash is a plain 404.
APPEND_SLASH = False

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
                "apps.ops.context.urls",
            ],
        },
    },
]

# --- Data stores -------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/surge")
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 3)
# Persistent connections: a sync gunicorn worker serves one request at a time, so one
# connection per process is reused instead of paying a connect per request.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
# No per-request health check: with psycopg2 it is an extra `SELECT 1` round trip on every
# request that touches the database (bench/RESULTS.md). A connection that broke is closed
# at the end of the request that found it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DB_CONN_HEALTH_CHECKS", default=False)
DATABASES["default"].setdefault("TEST", {})
# Named after the database by default, so two checkouts with their own DATABASE_URL never
# share (and drop) one test database, nor the private test Redis named after it.
DATABASES["default"]["TEST"]["NAME"] = env.str(
    "DATABASE_TEST_NAME", default=f"test_{DATABASES['default']['NAME']}"
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# One Redis serves as broker, cache, channel layer and hot counters by default; each use has
# its own variable so they can be split onto separate servers.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHE_REDIS_URL = env.str("CACHE_REDIS_URL", default=REDIS_URL)
CHANNELS_REDIS_URL = env.str("CHANNELS_REDIS_URL", default=REDIS_URL)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_REDIS_URL,
        "KEY_PREFIX": "surge",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py's asyncio reads time out after 5 s by default: exactly as long as
            # channels_redis blocks (BZPOPMIN) for a consumer's next message, so an idle
            # socket's consumer could die of a read timeout just before Redis answered.
            # Retries: after a Redis restart the pool's connections are dead, and redis-py's
            # asyncio client retries nothing by default, so the first command on each (a
            # socket's group_add) failed and the handshake answered 500. Events are hints a
            # client dedupes by seq/id, so a retried send is harmless.
            "hosts": [
                {
                    "address": CHANNELS_REDIS_URL,
                    "socket_timeout": 10,
                    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
                }
            ],
            "prefix": "surge:ws:",
            "capacity": env.int("CHANNELS_CAPACITY", default=1000),
            "expiry": 60,
        },
    }
}

# --- Auth --------------------------------------------------------------------------------
# Production checks passwords with Django's validators. Development and the acceptance
# tests (which register throwaway users with short passwords) only require a non-empty one.
PASSWORD_VALIDATION = env.str("PASSWORD_VALIDATION", default="basic" if DEBUG else "strict")
AUTH_PASSWORD_VALIDATORS = (
    [
        {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
        {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
        {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
        {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    ]
    if PASSWORD_VALIDATION == "strict"
    else []
)
# How long a web process may serve a token from its own memory before asking the database
# again: the upper bound on how late a revoked token is still accepted by another process.
AUTH_TOKEN_CACHE_SECONDS = env.float("AUTH_TOKEN_CACHE_SECONDS", default=5.0)
# The people's pages log in here (apps/accounts/page_urls.py); the admin keeps its own.
LOGIN_URL = "/accounts/login/"

# --- API ---------------------------------------------------------------------------------
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=1_048_576)
API_MAX_JSON_DEPTH = env.int("API_MAX_JSON_DEPTH", default=32)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
IDEMPOTENCY_TTL_HOURS = env.int("IDEMPOTENCY_TTL_HOURS", default=24)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its authenticate_header makes 401s carry `WWW-Authenticate: Token`.
        "apps.accounts.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.parsers.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.pagination.SurgeCursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "apps.core.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [],
    "DEFAULT_THROTTLE_RATES": {
        # Generous default: a load test registers thousands of users from one address.
        # (Only register and token are throttled: ScopedRateThrottle, scope "auth".)
        "auth": env.str("THROTTLE_RATE_AUTH", default="5000/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Surge API",
    "DESCRIPTION": (
        "Asynchronous handling of traffic surges. Errors are `{code, detail, fields}`; "
        "lists are `{results, next}`; POSTs that create or start something honour "
        "`Idempotency-Key`; every response carries `X-Request-ID`."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Celery ------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=4)
# Celery's Django fixup closes every database connection before and after each task unless
# this is set, so each task paid for a new PostgreSQL session (fork, auth, ~ms of CPU). With
# it, the fixup only recycles after this many tasks, and tasks/signals.py does what Django's
# request cycle does instead: close_old_connections() (CONN_MAX_AGE, broken connections).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Redis hands a message nobody acked to another worker after this many seconds: longer
    # than any task may run (tasks/limits.py keeps every time limit below half of it).
    "visibility_timeout": env.int(
        "CELERY_VISIBILITY_TIMEOUT", default=2 * celery_config.LONGEST_HARD_LIMIT_S
    ),
    # kombu looks for messages whose worker died when a worker starts, then every
    # interval x throttle seconds (10 x 10 = 100 s by kombu's default): every 10 s instead.
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# Worker events feed Flower's task views (config/celery.py keeps "sent" events off).
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_TASK_EVENTS", default=True)

# --- Processes and URLs ------------------------------------------------------------------
# (Where each process listens, BIND_HOST and the ports, is the Procfile's: read there.)
PUBLIC_HOST = env.str("PUBLIC_HOST", default="localhost")
WEB_PORT = env.int("WEB_PORT", default=8000)
WS_PORT = env.int("WS_PORT", default=8001)
FLOWER_PORT = env.int("FLOWER_PORT", default=5555)
WEB_BASE_URL = env.str("WEB_BASE_URL", default=f"http://{PUBLIC_HOST}:{WEB_PORT}")
WS_BASE_URL = env.str("WS_BASE_URL", default=f"ws://{PUBLIC_HOST}:{WS_PORT}")
FLOWER_URL = env.str("FLOWER_URL", default=f"http://{PUBLIC_HOST}:{FLOWER_PORT}")

CSRF_TRUSTED_ORIGINS = env.list(
    "CSRF_TRUSTED_ORIGINS",
    default=[WEB_BASE_URL, f"http://127.0.0.1:{WEB_PORT}"] if DEBUG else [],
)

# --- Static files, i18n ------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]  # the pages' shared CSS and JS (templates/base.html)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Logging -----------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "tasks.context.RequestIdLogFilter"}},
    "formatters": {
        "json": {"()": "apps.core.logging.JsonFormatter"},
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [rid=%(request_id)s] %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Celery's own loggers propagate to root, so worker lines get the same format.
        # Django's own console handler would print every django.* line a second time.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        # Every 4xx is a WARNING line by default: a flash sale's thousands of 410s would
        # cost more to log than to answer. 5xx are still logged.
        "django.request": {
            "level": env.str("DJANGO_REQUEST_LOG_LEVEL", default="ERROR"),
            "propagate": True,
        },
        "celery": {"level": LOG_LEVEL},
        "django.db.backends": {"level": "WARNING"},
    },
}

# Under gunicorn in development, WhiteNoise serves static files straight from the apps
# (no collectstatic needed); production serves the collected, hashed files.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- Tracing (tasks/tracing.py) ----------------------------------------------------------
TRACE_ENABLED = env.bool("TRACE_ENABLED", default=True)
TRACE_FLUSH = env.str("TRACE_FLUSH", default="thread")  # "thread" (batched) or "sync"
TRACE_FLUSH_INTERVAL = env.float("TRACE_FLUSH_INTERVAL", default=0.5)
TRACE_RETENTION_DAYS = env.int("TRACE_RETENTION_DAYS", default=7)

# --- Coupons -----------------------------------------------------------------------------
# Issue requests per user per window (all campaigns together): far above one honest try per
# campaign, far below a script hammering the endpoint.
COUPON_ISSUE_RATE_LIMIT = env.int("COUPON_ISSUE_RATE_LIMIT", default=20)
COUPON_ISSUE_RATE_WINDOW_MS = env.int("COUPON_ISSUE_RATE_WINDOW_MS", default=10_000)
# A campaign's drain chain (apps/coupons/tasks.py) runs a pass this often while requests
# keep coming; the first acceptance of a quiet sale starts one at once. Each pass has a
# fixed cost (a Celery task and its statements) paid on the same cores as the sale, so a
# pass a second, not ten (bench/RESULTS.md has the figures); an accepted request still
# becomes a coupon within about a second under load.
COUPON_DRAIN_EVERY_MS = env.int("COUPON_DRAIN_EVERY_MS", default=1000)

# --- Notifications -----------------------------------------------------------------------
# Web Push (VAPID, RFC 8292): base64url raw keys (the public one is the uncompressed P-256
# point browsers take as `applicationServerKey`); the JWT `sub` is VAPID_SUBJECT. None set:
# in development one pair generated once and kept in .run/ (a new pair would invalidate
# every browser subscription); with DJANGO_DEBUG=false, empty keys or subject refuse to start.
from apps.notifications.webpush.keys import vapid_settings  # noqa: E402

VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY, VAPID_SUBJECT = vapid_settings(
    public_key=env.str("VAPID_PUBLIC_KEY", default=""),
    private_key=env.str("VAPID_PRIVATE_KEY", default=""),
    subject=env.str("VAPID_SUBJECT", default=""),
    debug=DEBUG,
    run_dir=BASE_DIR / ".run",
)
# The push services a subscription's endpoint may point at: the server never posts to an
# arbitrary host. An entry matches the host exactly (any port); one starting with a dot
# also matches its subdomains. `https` only, except loopback hosts listed here.
WEBPUSH_ALLOWED_HOSTS = env.list(
    "WEBPUSH_ALLOWED_HOSTS",
    default=[
        "fcm.googleapis.com",
        ".push.services.mozilla.com",
        ".notify.windows.com",
        ".push.apple.com",
    ],
)

# Web Push delivery (apps/notifications/services/deliveries.py): a pass claims this many
# due deliveries and sends them on this many threads, outside any transaction. A claimed
# delivery whose outcome was never recorded (its worker died mid-send) is looked at again
# after WEBPUSH_LEASE_S, longer than a batch can take (BATCH / CONCURRENCY rounds of at most
# ~13 s each), and then ends failed, not sent again: at most one push per subscription.
WEBPUSH_BATCH_SIZE = env.int("WEBPUSH_BATCH_SIZE", default=100)
WEBPUSH_SEND_CONCURRENCY = env.int("WEBPUSH_SEND_CONCURRENCY", default=16)
WEBPUSH_LEASE_S = env.float("WEBPUSH_LEASE_S", default=120.0)
# 429/5xx/no answer: attempt n waits min(MAX, BASE * 2**(n-1)) s with jitter, and never less
# than the push service's Retry-After (itself clamped to MAX); after MAX_ATTEMPTS: failed.
WEBPUSH_MAX_ATTEMPTS = env.int("WEBPUSH_MAX_ATTEMPTS", default=5)
WEBPUSH_RETRY_BASE_S = env.float("WEBPUSH_RETRY_BASE_S", default=5.0)
WEBPUSH_RETRY_MAX_S = env.float("WEBPUSH_RETRY_MAX_S", default=600.0)

# --- Emails ------------------------------------------------------------------------------
# The SMTP server every mail goes through (apps/emails/sending.py, one connection per batch).
# The default is the local development sink (Procfile `smtp`), which accepts anything.
EMAIL_HOST = env.str("EMAIL_HOST", default="127.0.0.1")
EMAIL_PORT = env.int("EMAIL_PORT", default=1025)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Surge <noreply@surge.localhost>")
# Seconds each SMTP reply may take; a message's send is bounded by a few of these, which
# is what a claim's lease must leave before a send starts.
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
# Rows one drain pass claims and sends over one connection, and how long its claim lasts
# (a dead worker's rows are claimed again after it): far more than a batch's sends take.
EMAIL_BATCH_SIZE = env.int("EMAIL_BATCH_SIZE", default=50)
EMAIL_CLAIM_LEASE_S = env.float("EMAIL_CLAIM_LEASE_S", default=300.0)
# A deferred mail (SMTP 4xx, lost connection) waits uniform(step/2, step) seconds, step =
# min(MAX, BASE * 2**(attempts - 1)); after EMAIL_MAX_ATTEMPTS claims it is `failed`.
EMAIL_RETRY_BACKOFF_BASE_S = env.float("EMAIL_RETRY_BACKOFF_BASE_S", default=60.0)
EMAIL_RETRY_BACKOFF_MAX_S = env.float("EMAIL_RETRY_BACKOFF_MAX_S", default=3600.0)
EMAIL_MAX_ATTEMPTS = env.int("EMAIL_MAX_ATTEMPTS", default=8)

# --- Orders and payments -----------------------------------------------------------------
PAYMENT_GATEWAY_URL = env.str("PAYMENT_GATEWAY_URL", default="http://127.0.0.1:8010")
PAYMENT_GATEWAY_TIMEOUT_S = env.float("PAYMENT_GATEWAY_TIMEOUT_S", default=2.0)

# --- Async toolkit: retries, redeliveries, outbox (tasks/) ---------------------------------
TASK_MAX_RETRIES = env.int("TASK_MAX_RETRIES", default=5)
TASK_RETRY_BACKOFF_BASE = env.float("TASK_RETRY_BACKOFF_BASE", default=1.0)
TASK_RETRY_BACKOFF_MAX = env.float("TASK_RETRY_BACKOFF_MAX", default=300.0)
TASK_MAX_REDELIVERIES = env.int("TASK_MAX_REDELIVERIES", default=5)
OUTBOX_SWEEP_UNSENT_AFTER_S = env.float("OUTBOX_SWEEP_UNSENT_AFTER_S", default=5.0)
OUTBOX_REPUBLISH_UNCONFIRMED_AFTER_S = env.float(
    "OUTBOX_REPUBLISH_UNCONFIRMED_AFTER_S", default=3600.0
)
OUTBOX_SWEEP_BATCH_SIZE = env.int("OUTBOX_SWEEP_BATCH_SIZE", default=500)
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=7)
# Sagas (tasks/saga/; the invariants these keep are in its package docstring).
# A failed step's retry waits uniform(0, min(MAX, BASE * 2**(attempt - 1))) seconds.
SAGA_BACKOFF_BASE = env.float("SAGA_BACKOFF_BASE", default=1.0)
SAGA_BACKOFF_MAX = env.float("SAGA_BACKOFF_MAX", default=60.0)
# Retries due sooner ride on an advance message held by a worker; later ones on the sweeper.
SAGA_COUNTDOWN_MAX = env.float("SAGA_COUNTDOWN_MAX", default=5.0)
# Soft time limit of a turn; hard limit = soft + SAGA_HARD_LIMIT_MARGIN; a dead runner's
# lease expires SAGA_LEASE_MARGIN after the hard limit. Read once, at import.
SAGA_STEP_TIME_LIMIT = env.float("SAGA_STEP_TIME_LIMIT", default=60.0)
SAGA_HARD_LIMIT_MARGIN = env.float("SAGA_HARD_LIMIT_MARGIN", default=15.0)
SAGA_LEASE_MARGIN = env.float("SAGA_LEASE_MARGIN", default=15.0)
# How long a queued advance may wait before the sweeper sends another.
SAGA_RECOVER_AFTER = env.float("SAGA_RECOVER_AFTER", default=60.0)
# A turn starts no new step after this many seconds (the next one is a new task), so one
# saga never holds a worker thread for long while others wait.
SAGA_TURN_BUDGET = env.float("SAGA_TURN_BUDGET", default=2.0)
# Sagas the sweeper (tasks.saga_wake) wakes per run at most.
SAGA_WAKE_BATCH = env.int("SAGA_WAKE_BATCH", default=500)

# --- Wallets -----------------------------------------------------------------------------
# The largest amount one transaction may move (a decimal string).
WALLET_MAX_AMOUNT = env.str("WALLET_MAX_AMOUNT", default="1000000.00")

# --- Worker heartbeats (apps/ops/heartbeat.py, read by /readyz) --------------------------
# Each worker writes one every interval; /readyz counts a worker live until its last beat is
# TTL old. The TTL spans a few beats, so one late beat (a busy event loop, a reconnect)
# never reads as a dead worker; it is also how long a killed worker still counts.
WORKER_HEARTBEAT_INTERVAL_S = env.float("WORKER_HEARTBEAT_INTERVAL_S", default=2.0)
WORKER_HEARTBEAT_TTL_S = env.float("WORKER_HEARTBEAT_TTL_S", default=8.0)
if WORKER_HEARTBEAT_TTL_S <= WORKER_HEARTBEAT_INTERVAL_S:
    raise ImproperlyConfigured("WORKER_HEARTBEAT_TTL_S must be longer than the interval.")

# --- Chat (apps/chat) --------------------------------------------------------------------
# Frames (message.send, typing) one chat socket may send per second; past it: rate_limited.
CHAT_RATE_PER_SECOND = env.int("CHAT_RATE_PER_SECOND", default=10)
# The largest message body, in UTF-8 bytes; a longer one gets too_large and is not stored.
CHAT_MAX_BODY_BYTES = env.int("CHAT_MAX_BODY_BYTES", default=4096)
