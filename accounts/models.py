"""API keys, their limits, the leases that count requests in flight, and usage records.

Everything that must hold across server processes lives in the database, so one
PostgreSQL shared by several processes (or machines) enforces one limit between them.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from llmserver import clock

SECRET_PREFIX = "sk-"
# 32 random bytes -> 43 URL-safe characters after "sk-".
_SECRET_BYTES = 32
# A cost's decimal places (UsageRecord.cost); counters sum costs in units of 10**-COST_PLACES.
COST_PLACES = 10
VISIBLE_PREFIX_LENGTH = 12  # "sk-" and 9 characters: enough to tell keys apart, useless to an attacker
# A key's last_used_at is written at most once a second: under load that is one write a
# second instead of one per request, and the admin shows it to the second anyway.
LAST_USED_RESOLUTION = timedelta(seconds=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week"
    MONTH = "month", "Month"


def period_start(period: str, now) -> timezone.datetime:
    """The start (UTC) of the budget period that contains ``now``."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        return day
    if period == BudgetPeriod.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(period: str, now) -> timezone.datetime:
    start = period_start(period, now)
    if period == BudgetPeriod.DAY:
        return start + timedelta(days=1)
    if period == BudgetPeriod.WEEK:
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


class KeyKind(models.TextChoices):
    API = "api", "API"
    # A user's key for the chat page: created for them on first use, its secret never
    # shown to anyone (the page authenticates with the user's session), limited and
    # accounted like any other key.
    CHAT = "chat", "Chat page"


class APIKeyQuerySet(models.QuerySet):
    def usable(self):
        now = clock.now()
        return self.filter(is_active=True).filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))

    def chat_key_for(self, user) -> APIKey:
        """``user``'s chat-page key, created with the default chat limits on first use.
        Whatever state an admin left it in (revoked, limited) is returned as it is."""
        try:
            return self.get(owner=user, kind=KeyKind.CHAT)
        except APIKey.DoesNotExist:
            pass
        key = APIKey(name=f"Chat: {user.get_username()}"[:100], owner=user, kind=KeyKind.CHAT,
                     max_concurrency=settings.CHAT_KEY_MAX_CONCURRENCY)
        key.set_new_secret()  # never shown: only the session of its owner uses this key
        try:
            with transaction.atomic():
                key.save(force_insert=True)
        except IntegrityError:  # created meanwhile by another request of the same user
            return self.get(owner=user, kind=KeyKind.CHAT)
        return key


class APIKey(models.Model):
    """An API key. Only the SHA-256 of the secret is stored; the secret is shown once."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="api_keys")
    kind = models.CharField(max_length=8, choices=KeyKind.choices, default=KeyKind.API, editable=False,
                            help_text="Chat-page keys are created for each user by the chat page.")
    prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, editable=False,
                              help_text="The first characters of the key, to recognise it.")
    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True, help_text="Untick to revoke the key.")
    is_admin = models.BooleanField(
        "admin", default=False, help_text="May load and unload models through the API (/v1/models/{id}/load, …).")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests in flight at once; empty = no per-key limit.")
    allowed_models = models.JSONField(
        default=list, blank=True, help_text='Model ids this key may use, e.g. ["llmserver-demo"]; empty = all.')
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens (prompt + completion) per budget period; empty = unlimited.")
    cost_budget = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="Cost (in COST_CURRENCY, at the models' prices) per budget period; empty = unlimited.")
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner"], condition=models.Q(kind="chat"), name="one_chat_key_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, name: str, **fields) -> tuple[APIKey, str]:
        """Create a key; return it and its secret (the only time the secret exists)."""
        key = cls(name=name, **fields)
        secret = key.set_new_secret()
        key.save()
        return key, secret

    def set_new_secret(self) -> str:
        secret = SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
        self.prefix = secret[:VISIBLE_PREFIX_LENGTH]
        self.hashed_secret = hash_secret(secret)
        return secret

    def may_use(self, *names: str) -> bool:
        """Whether the key may use the model known by ``names`` (its id and aliases: a
        key allowed one of them is allowed the model)."""
        return not self.allowed_models or any(name in self.allowed_models for name in names)

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= clock.now()

    def revoke(self) -> None:
        self.is_active = False
        self.revoked_at = clock.now()
        self.save(update_fields=["is_active", "revoked_at"])

    def reactivate(self) -> None:
        self.is_active = True
        self.revoked_at = None
        self.save(update_fields=["is_active", "revoked_at"])


class KeyAllowance(models.Model):
    """What a user may make on the API keys page (accounts.self_service): how many keys
    they may hold at once, and the limits each key they make gets. A user without a row
    may hold ``SELF_SERVICE_MAX_KEYS`` keys, each without limits of its own (the
    deployment's still apply); the models are those their chat key may use."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="key_allowance")
    max_keys = models.PositiveIntegerField(default=5, help_text="Active keys the user may hold at once; 0 = none.")
    max_concurrency = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = no per-key limit.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    token_budget = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    cost_budget = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True,
                                      help_text="In COST_CURRENCY; empty = unlimited.")
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)

    # The limits a key made on the page copies from here.
    LIMITS = ("max_concurrency", "requests_per_minute", "tokens_per_minute", "token_budget", "cost_budget",
              "budget_period")

    class Meta:
        verbose_name = "self-service key allowance"

    def __str__(self) -> str:
        return f"Allowance of {self.user}"

    @classmethod
    def of(cls, user) -> KeyAllowance:
        """The user's allowance; the default one (not saved) if an admin set none."""
        try:
            return cls.objects.get(user=user)
        except cls.DoesNotExist:
            return cls(user=user, max_keys=settings.SELF_SERVICE_MAX_KEYS)


class LimitScope(models.Model):
    """A row to lock while admitting a request, so that counting the deployment's leases
    and taking one is atomic across processes: the one named ``global``. (A key's own
    limits lock the key's row.)"""

    name = models.CharField(max_length=40, unique=True)

    class Meta:
        verbose_name = "limit scope"

    def __str__(self) -> str:
        return self.name


class Lease(models.Model):
    """One request in flight, held by one server process. Processes renew their leases
    while the request runs; a lease whose process died expires and stops counting."""

    api_key = models.ForeignKey(APIKey, null=True, on_delete=models.CASCADE, related_name="leases")
    request_id = models.CharField(max_length=128)
    holder = models.CharField(max_length=64, db_index=True, help_text="The server process holding it.")
    acquired_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["api_key", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.request_id} · {self.holder}"


class UsageCounter(models.Model):
    """Requests and tokens of one key in one time bucket (a minute, or a budget period),
    kept as running sums so that limits never scan the usage records."""

    class Kind(models.TextChoices):
        MINUTE = "minute"
        PERIOD = "period"

    api_key = models.ForeignKey(APIKey, on_delete=models.CASCADE, related_name="counters")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    starts_at = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    # The usage records' cost in whole 1e-10 of COST_CURRENCY (their cost's decimal
    # places): an integer, so that sums are exact on every database.
    cost_units = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "kind", "starts_at"], name="one_counter_per_bucket")]

    def __str__(self) -> str:
        return f"key {self.api_key_id} · {self.kind} from {timezone.localtime(self.starts_at):%Y-%m-%d %H:%M}"

    @property
    def cost(self) -> Decimal:
        return Decimal(self.cost_units).scaleb(-COST_PLACES)

    @classmethod
    def current_periods(cls, keys, now) -> dict[int, UsageCounter]:
        """Each key's counter of its current budget period, by key id (none yet: absent)."""
        buckets = models.Q(pk__in=[])
        for key in keys:
            buckets |= models.Q(api_key=key, starts_at=period_start(key.budget_period, now))
        return {c.api_key_id: c for c in cls.objects.filter(buckets, kind=cls.Kind.PERIOD)}


class ModelPrice(models.Model):
    """What a model's tokens cost, per million, in ``COST_CURRENCY``. A usage record's
    cost is computed from the price when the record is written, so a later change of
    price leaves the records before it as they were. Rows come from MODELS_CONFIG's
    ``prices`` (kept in step with it while nobody edits them here) or from the admin."""

    class Source(models.TextChoices):
        CONFIG = "config", "MODELS_CONFIG"
        ADMIN = "admin", "the admin"

    model = models.CharField(max_length=256, unique=True, help_text="The model's id in the catalogue.")
    prompt_per_million = models.DecimalField(max_digits=14, decimal_places=6, verbose_name="prompt, per million tokens")
    completion_per_million = models.DecimalField(max_digits=14, decimal_places=6,
                                                 verbose_name="completion, per million tokens")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.ADMIN, editable=False,
                              help_text="A price edited in the admin is no longer updated from MODELS_CONFIG.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


class UsageRecord(models.Model):
    """Exactly one per authenticated request, written when its response ends."""

    api_key = models.ForeignKey(APIKey, null=True, on_delete=models.SET_NULL, related_name="usage")
    key_prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, blank=True)
    model = models.CharField(max_length=256, blank=True, db_index=True)
    endpoint = models.CharField(max_length=64)
    request_id = models.CharField(max_length=128, db_index=True)
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=32, blank=True)
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(db_index=True)
    duration_ms = models.FloatField()
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    client_disconnected = models.BooleanField(default=False)
    user = models.CharField(max_length=256, blank=True, help_text="The request's OpenAI 'user' field.")
    cost = models.DecimalField(max_digits=20, decimal_places=COST_PLACES, null=True, blank=True,
                               help_text="In COST_CURRENCY, at the model's price when the record was written; "
                                         "empty when the model had no price.")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["api_key", "started_at"])]

    def __str__(self) -> str:
        """What a person tells requests apart by, without a query for the key's name: the
        endpoint, the model (if it had one), the key's prefix and the time to the second."""
        key = f"{self.key_prefix}…" if self.key_prefix else "no key"
        parts = [self.endpoint, self.model, key, f"{timezone.localtime(self.started_at):%Y-%m-%d %H:%M:%S}"]
        return " · ".join(part for part in parts if part)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
