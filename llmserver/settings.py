"""Settings for llmserver.

The environment is read here and only here (django-environ); every other module reads
``django.conf.settings``. Every name is listed, with its default, in ``.env.example``.
A ``.env`` file in the project root is read if present; real environment variables win.
"""

import os
from pathlib import Path
from typing import NoReturn

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _positive_int(name: str, default: int) -> int:
    """Read an integer that must be >= 1, failing loudly at start-up otherwise."""
    value = env.int(name, default=default)
    if value < 1:
        raise environ.ImproperlyConfigured(f"{name} must be a positive integer, got {value}")
    return value


def _switch(name: str, default: bool) -> bool:
    """Read an on/off switch; unlike env.bool, a value that is neither (a typo such as
    PRODUCTION=ture) stops the start instead of reading as off."""
    value = env.str(name, default=str(default)).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    _refuse(f"{name} must be true or false, got {value!r}")


def _refuse(message: str) -> NoReturn:
    """Stop at start with one line saying what is wrong (no traceback to read through)."""
    raise SystemExit(f"llmserver: {message}")


# --- Django core ----------------------------------------------------------------------

# The one switch between a laptop (the default: plain HTTP on loopback, a built-in key)
# and a deployment facing the internet (README, "Running in production").
PRODUCTION = _switch("PRODUCTION", False)
DEBUG = _switch("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
# Behind a proxy that terminates TLS, requests arrive as plain HTTP; only a proxy that
# always sets (or strips) X-Forwarded-Proto may be trusted to say they were HTTPS.
if _switch("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Behind a reverse proxy (nginx, a load balancer) every request comes from the proxy's
# address; with this on, Daphne takes the client's from X-Forwarded-For instead (its first
# address), for METRICS_ALLOWED_IPS and the access log. Only for a server reachable
# through the proxy alone, a proxy that sets the header itself (replacing a client's own,
# as deploy/nginx/llmserver-proxy.conf does): anyone reaching the server directly could
# claim any address with it.
TRUST_X_FORWARDED_FOR = _switch("TRUST_X_FORWARDED_FOR", False)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A request refused for its CSRF token: JSON for scripts, Django's page for forms.
CSRF_FAILURE_VIEW = "llmserver.errors.csrf_failure"
# Django's defaults, spelled out: they are what the tests assert on every page.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

if not PRODUCTION:
    SECRET_KEY = SECRET_KEY or "llmserver-insecure-development-key-change-me"
else:
    # What `check --deploy` would warn about, refused before anything starts.
    if not SECRET_KEY:
        _refuse("PRODUCTION=true needs a SECRET_KEY: set one of 50 or more random characters, e.g. "
                "from python -c 'import secrets; print(secrets.token_urlsafe(50))'")
    # The same bar as check --deploy's security.W009.
    _weak = (f"it has {len(SECRET_KEY)} characters" if len(SECRET_KEY) < 50
             else "it has fewer than 5 different characters" if len(set(SECRET_KEY)) < 5
             else "it is a django-insecure- development key" if SECRET_KEY.startswith("django-insecure-")
             else "")
    if _weak:
        _refuse(f"PRODUCTION=true needs a SECRET_KEY of 50 or more random characters; {_weak}")
    if DEBUG:
        _refuse("PRODUCTION=true refuses DEBUG=true (it would show settings and tracebacks to visitors)")
    if not ALLOWED_HOSTS:
        _refuse("PRODUCTION=true needs ALLOWED_HOSTS: the host names this server answers to, "
                "e.g. ALLOWED_HOSTS=llm.example.com")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Plain HTTP is redirected to HTTPS (API paths included: APISecurityMiddleware reads
    # the same settings), except /health, which a load balancer probes over HTTP.
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^health$"]
    SECURE_HSTS_SECONDS = _positive_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preloading is a commitment only the domain's owner can make (hstspreload.org):
    # off unless asked for, and then check --deploy's reminder of it is not a finding.
    SECURE_HSTS_PRELOAD = _switch("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

INSTALLED_APPS = [
    "daphne",
    "llmserver.admin_site.AdminConfig",  # the default admin site is llmserver's
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "channels",
    "inference",
    "accounts",
    "chat",
]

MIDDLEWARE = [
    "llmserver.middleware.RequestContextMiddleware",
    "llmserver.middleware.RequestSizeLimitMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (/static/...) answered here, before sessions and CSRF (see STORAGES).
    # Sync-only: the web paths' chain runs in Django's per-request thread from the top
    # (the API paths never see it: API_MIDDLEWARE).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The API paths (/v1/, /tokenize, /detokenize, /health, /metrics) are served by
# APIHandler (llmserver/patches/asgi_handler.py) with this chain instead: every one
# async, none needing a session (see that module for why).
API_MIDDLEWARE = [
    "llmserver.middleware.RequestContextMiddleware",
    "llmserver.middleware.RequestSizeLimitMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "llmserver.handlers.APISecurityMiddleware",
]

ROOT_URLCONF = "llmserver.urls"
ASGI_APPLICATION = "llmserver.asgi.application"
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
            ],
        },
    },
]

# SQLite by default so a newcomer needs nothing; PostgreSQL in production via DATABASE_URL.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        # Take the write lock when a transaction begins, so that "count the leases, then
        # take one" is atomic across server processes sharing the file.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        # Readers never wait for the writer, and a commit is not an fsync (a crash may
        # lose the last commits, never corrupt the file): the accounting's write load.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
    # A file, not memory, so that the test suite's server processes share it; one per
    # test run, so that two runs in one checkout do not recreate each other's.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"db-test-{os.getpid()}.sqlite3")}
else:
    # Under ASGI Django runs each request's database work in a thread of its own, so
    # persistent per-thread connections (CONN_MAX_AGE) would mean a new connection per
    # request; a pool shared by the threads reuses them instead.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("DATABASE_POOL_SIZE", default=20),
        "timeout": 10,
    }
    # The pool checks a connection before lending it (one round trip), so that after a
    # database restart or failover a page gets a fresh connection, not an error. (The
    # accounting thread's connection is held, not borrowed, so not checked: after such
    # a drop its next call fails (a request answered 500 internal_error, or a lease
    # renewal, retried) and it reconnects.)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Connection reuse, what it means here. The API paths never touch the database on their
# own: key lookups, admissions, lease renewals and usage records all run on the one
# accounting thread of each server process (accounts/books.py), which opens its
# connection once and keeps it for the life of the process (reopened only after an
# error that broke it); the chat page's key lookups run there too. The rest of the web
# pages' queries (sessions, users, the admin's pages) and the chat socket's session
# lookup run in sync threads (Django's, one per web request; Channels' for the socket).
# On PostgreSQL each borrows a connection from the pool above and gives it back when the
# request ends: no new connection per request (tests/test_operations.py watches the
# backends). On SQLite each opens the file and closes it at the end (CONN_MAX_AGE 0: a
# kept connection would be left behind with each request's thread), which costs an
# open() and two PRAGMAs, no network. A process holds at most DATABASE_POOL_SIZE
# PostgreSQL connections, the accounting thread's among them (it borrows from the same
# pool and never gives it back).
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The layer waits for messages with a 5 s blocking pop; redis-py 8's default
            # 5 s socket timeout then fires first and every idle chat socket dies (1011).
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# Django's cache holds the failure counts of API keys and logins (accounts/throttle.py):
# in Redis, shared by every process, when REDIS_URL is set; else in each process's memory.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": "llmserver"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `python manage.py collectstatic` gathers them (relative: to the project folder).
STATIC_ROOT = BASE_DIR / env.str("STATIC_ROOT", default="staticfiles")
# Static files (the admin's and the chat page's CSS and JS) are served by WhiteNoise's
# middleware, on the web paths only (the API paths have their own chain, API_MIDDLEWARE).
if PRODUCTION:
    # Only what collectstatic put in STATIC_ROOT: each file also under a name holding a
    # hash of its content (cached for 10 years, immutable), and gzip-compressed;
    # pages link the hashed names through collectstatic's manifest (staticfiles.json).
    # The server refuses to start without that manifest (llmserver/static.py), and a
    # name it lacks (collectstatic not run after an upgrade) is linked unhashed rather
    # than failing the page with a 500.
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "llmserver.static.CompressedManifestStaticFilesStorage"},
    }
    WHITENOISE_USE_FINDERS = False
    WHITENOISE_AUTOREFRESH = False
else:
    # On a laptop no collectstatic step: Django's plain storage links the files by their
    # own names and WhiteNoise finds them in the apps' static/ folders at each request
    # (autorefresh: an edited chat.css shows on the next load; STATIC_ROOT need not exist).
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = True

# --- HTTP front ----------------------------------------------------------------------

SERVER_HOST = env.str("SERVER_HOST", default="127.0.0.1")
SERVER_PORT = env.int("SERVER_PORT", default=8000)
# On SIGTERM/SIGINT the server stops accepting and gives the requests in flight this long
# to finish before it cuts them off (llmserver/shutdown.py).
SHUTDOWN_GRACE_SECONDS = env.float("SHUTDOWN_GRACE_SECONDS", default=30.0)
if SHUTDOWN_GRACE_SECONDS < 0:
    raise environ.ImproperlyConfigured(f"SHUTDOWN_GRACE_SECONDS must be 0 or more, got {SHUTDOWN_GRACE_SECONDS}")

MAX_REQUEST_SIZE_MB = env.float("MAX_REQUEST_SIZE_MB", default=10.0)
MAX_REQUEST_SIZE_BYTES = int(MAX_REQUEST_SIZE_MB * 1024 * 1024)
# Django's own guard raises at the same size; the middleware answers 413 before that.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_SIZE_BYTES
# A request has this long from its first byte to the end of its headers, then this long
# for its body; past either it gets 408 and the connection closes
# (llmserver/patches/http_framing.py).
REQUEST_HEADERS_TIMEOUT_SECONDS = env.float("REQUEST_HEADERS_TIMEOUT_SECONDS", default=10.0)
REQUEST_BODY_TIMEOUT_SECONDS = env.float("REQUEST_BODY_TIMEOUT_SECONDS", default=30.0)
if min(REQUEST_HEADERS_TIMEOUT_SECONDS, REQUEST_BODY_TIMEOUT_SECONDS) <= 0:
    raise environ.ImproperlyConfigured("REQUEST_HEADERS_TIMEOUT_SECONDS and REQUEST_BODY_TIMEOUT_SECONDS must be "
                                       "more than 0 seconds")

_cors_origins = env.list("CORS_ORIGINS", default=[])
CORS_ALLOW_ALL_ORIGINS = _cors_origins == ["*"]
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else _cors_origins
CORS_EXPOSE_HEADERS = ["X-Request-ID", "X-Process-Time", "Retry-After"]

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "llmserver.errors.drf_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON is the only format: a ?format= query is an ordinary (ignored) parameter, not
    # DRF's renderer override, which answers an unknown format with Http404.
    "URL_FORMAT_OVERRIDE": None,
    # DRF's, refusing also deep nesting, lone surrogates, duplicate keys and compressed bodies.
    "DEFAULT_PARSER_CLASSES": ["inference.protocol.JSONParser"],
    # API keys are checked on the event loop by the views (accounts.auth.authenticate),
    # not by DRF's authentication and permission classes, which run in the sync thread.
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    # GET /openapi.json is generated by drf-spectacular (inference/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

# --- API keys, limits, accounting ---------------------------------------------------

# Off only for benchmarks of the bare serving path: then no key is asked for, nothing is
# recorded, and MAX_CONCURRENT_REQUESTS is counted per process.
REQUIRE_API_KEY = _switch("REQUIRE_API_KEY", True)
if PRODUCTION and not REQUIRE_API_KEY:
    _refuse("PRODUCTION=true refuses REQUIRE_API_KEY=false (anyone could use the models, unrecorded)")
# A request in flight holds a lease its process renews; a dead process's leases stop
# counting after at most LEASE_TTL_SECONDS.
LEASE_TTL_SECONDS = _positive_int("LEASE_TTL_SECONDS", 30)
LEASE_RENEW_SECONDS = max(1, LEASE_TTL_SECONDS // 3)
# Finished requests are settled (lease given back, tokens counted, usage record written)
# in batches, each waiting at most this long; this process's own admissions count them
# at once, other processes see them within it (accounts/books.py).
USAGE_WRITE_DELAY_MS = env.float("USAGE_WRITE_DELAY_MS", default=100.0)
# The concurrency limit a user's chat-page key starts with (an admin may change it on the
# key); 0 = none.
CHAT_KEY_MAX_CONCURRENCY = env.int("CHAT_KEY_MAX_CONCURRENCY", default=2) or None

# Where the chat page keeps conversations: "server" (chat.models.Conversation: they follow
# the user to any browser) or "browser" (its localStorage only, for deployments that
# keep no chat history). The page says which is in force.
CHAT_HISTORY = env.str("CHAT_HISTORY", default="server").strip().lower()
if CHAT_HISTORY not in ("server", "browser"):
    raise environ.ImproperlyConfigured(f"CHAT_HISTORY is 'server' or 'browser', not {CHAT_HISTORY!r}.")
# Whether the admin lists people's conversations (off: nobody reads them there).
CHAT_ADMIN_READS_CONVERSATIONS = _switch("CHAT_ADMIN_READS_CONVERSATIONS", False)

# Keys a user may hold at once on the API keys page (/keys/) unless an admin gave them
# an allowance (accounts.models.KeyAllowance).
SELF_SERVICE_MAX_KEYS = env.int("SELF_SERVICE_MAX_KEYS", default=5)

# The currency of model prices (accounts.models.ModelPrice) and of usage costs: a label
# shown beside them, not converted.
COST_CURRENCY = env.str("COST_CURRENCY", default="USD")
# Client addresses that may read /metrics without a key (else: an admin key).
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])
# Guessing (accounts/throttle.py), counted per client address (X-Forwarded-For's with
# TRUST_X_FORWARDED_FOR): past this many wrong API keys within a minute, a wrong key gets
# 429 until the minute since the first is over (a valid key is still served).
API_KEY_FAILURES_PER_MINUTE = _positive_int("API_KEY_FAILURES_PER_MINUTE", 20)
# Failed logins (the chat page's and the admin's) allowed per username and per client
# address within LOGIN_FAILURES_WINDOW_MINUTES of the first; past either, that username or
# address may not log in (even with the right password) until the window is over.
LOGIN_FAILURES_PER_USERNAME = _positive_int("LOGIN_FAILURES_PER_USERNAME", 5)
LOGIN_FAILURES_PER_ADDRESS = _positive_int("LOGIN_FAILURES_PER_ADDRESS", 20)
LOGIN_FAILURES_WINDOW_MINUTES = _positive_int("LOGIN_FAILURES_WINDOW_MINUTES", 15)

# --- Chat page -----------------------------------------------------------------------

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"

# --- Inference -----------------------------------------------------------------------

# A relative MODEL_PATH is relative to the project folder, wherever the server starts.
MODEL_PATH = str(BASE_DIR / env.str("MODEL_PATH", default="models/demo"))
MODEL_ID = env.str("MODEL_ID", default="llmserver-demo")
# A TOML file listing several models (see inference/registry.py); when set, it is the
# whole catalogue and MODEL_PATH/MODEL_ID are not used.
MODELS_CONFIG = env.str("MODELS_CONFIG", default="")
# Models held in memory at once; past it the least recently used idle one is unloaded.
MAX_LOADED_MODELS = _positive_int("MAX_LOADED_MODELS", 2)
# Unload a model idle this long (seconds); 0 = keep it until room is needed.
MODEL_KEEP_ALIVE_SECONDS = env.float("MODEL_KEEP_ALIVE_SECONDS", default=0.0)
MAX_BATCH_SIZE = _positive_int("MAX_BATCH_SIZE", 16)
MAX_CONCURRENT_REQUESTS = _positive_int("MAX_CONCURRENT_REQUESTS", 64)
# Generations (a request's n choices count n) waiting for a batch slot of one model in one
# process; past it a request gets 503 at once instead of waiting without end.
MAX_QUEUED_REQUESTS = _positive_int("MAX_QUEUED_REQUESTS", 64)
DEFAULT_MAX_TOKENS = _positive_int("DEFAULT_MAX_TOKENS", 256)
# A chat request to a reasoning model (one whose output has a <think> block) that sets no
# max_tokens: the thinking alone often runs to hundreds or thousands of tokens.
DEFAULT_REASONING_MAX_TOKENS = _positive_int("DEFAULT_REASONING_MAX_TOKENS", 4096)
# The single MODEL_PATH model's options, and MAX_MODEL_LEN the default of every model's
# (inference/model_options.py). The engine sizes each sequence's cache by the context, so
# a model exported with a 128k context is served with this one unless told otherwise.
MAX_MODEL_LEN = _positive_int("MAX_MODEL_LEN", 4096)
CHAT_TEMPLATE = env.str("CHAT_TEMPLATE", default="")
TOOL_PARSER = env.str("TOOL_PARSER", default="auto")
REASONING_PARSER = env.str("REASONING_PARSER", default="auto")
GENERATION_DEFAULTS = _switch("GENERATION_DEFAULTS", False)
DEFAULT_TEMPERATURE = env.float("DEFAULT_TEMPERATURE", default=0.0)
if DEFAULT_TEMPERATURE < 0 or DEFAULT_TEMPERATURE > 2:
    raise environ.ImproperlyConfigured("DEFAULT_TEMPERATURE must be between 0 and 2")
# How soon a thread waiting for the GIL (an engine thread after its step) gets it.
GIL_SWITCH_INTERVAL_MS = env.float("GIL_SWITCH_INTERVAL_MS", default=0.5)
# Benchmarks only: the class that owns each model (bench.naive.GeneratorWorker is the
# one-Generator-per-request baseline `make bench` compares against).
ENGINE_WORKER_CLASS = env.str("ENGINE_WORKER_CLASS", default="inference.engine.EngineWorker")
# Testing only: sleep this long before each engine step, to simulate a slower model.
ENGINE_STEP_DELAY_MS = env.float("ENGINE_STEP_DELAY_MS", default=0.0)
# Testing only: SIGUSR1 makes every loaded engine's next step fail (inference/faults.py).
ENGINE_FAULT_INJECTION = _switch("ENGINE_FAULT_INJECTION", False)
if PRODUCTION and ENGINE_FAULT_INJECTION:
    _refuse("PRODUCTION=true refuses ENGINE_FAULT_INJECTION=true (a signal would fail the engines' steps)")
# Load the model when the ASGI application starts. Off only for tests that import the
# ASGI app without an engine.
LOAD_MODELS_ON_START = _switch("LOAD_MODELS_ON_START", True)

# --- Logging -------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
# plain: a line of text per record; json: one JSON object per line, with the fields the
# code attaches (the access log's request id, status, duration...) as keys of their own
# (llmserver/logs.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    _refuse(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
# Also routes Python's warnings through the log, so they come out in LOG_FORMAT too.
LOGGING_CONFIG = "llmserver.logs.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "llmserver.logs.JSONFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Without Django's own handlers on it (a second, unformatted copy of each record
        # with DEBUG on; mail to ADMINS, of which there are none): its records reach ours.
        "django": {"handlers": []},
        # Daphne logs every request itself; ours carries the request id and duration.
        "django.server": {"level": "WARNING"},
        # 4xx answers are the client's business and already in llmserver.access.
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
    },
}
