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


class Limits(models.Model):
    """The limits a team or a user holds across all their keys (an API key holds the same
    ones of its own): every request of theirs counts against each, and the tightest wins
    (accounts.limits). Empty = no such limit."""

    max_concurrency = models.PositiveIntegerField(null=True, blank=True, help_text="Requests in flight at once.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens (prompt + completion) per budget period.")
    cost_budget = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True,
                                      help_text="In COST_CURRENCY, at the models' prices, per budget period.")
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)

    LIMITS = ("max_concurrency", "requests_per_minute", "tokens_per_minute", "token_budget", "cost_budget",
              "budget_period")

    class Meta:
        abstract = True


class Team(Limits):
    """People who share limits and a budget: each request of a key that belongs to the
    team counts against the team's limits as well as the key's and its owner's. Its
    members' keys get the team's key allowance (KeyAllowance with this team) unless a
    member has one of their own. Team leads see the team's usage on their API keys page."""

    name = models.CharField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="TeamMembership", related_name="teams",
                                     blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMembership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships")
    is_lead = models.BooleanField("team lead", default=False,
                                  help_text="Sees the team's usage and budget on the API keys page.")

    class Meta:
        verbose_name = "member"
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team}"


class UserLimits(Limits):
    """A user's limits across all their keys (their chat key included)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")

    class Meta:
        verbose_name = verbose_name_plural = "limits across the user's keys"

    def __str__(self) -> str:
        return f"Limits of {self.user}"


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
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="keys",
                             help_text="Its requests count against the team's limits too; the owner should be a member.")
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

    # Those besides the key that its requests count against (its owner's limits, its
    # team: accounts.limits.Holder), as its last admission read them.
    shared_holders: tuple = ()

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

    def fill_from_team(self) -> None:
        """Give a new key of a team its team's default limits for members' keys (the
        team's KeyAllowance) wherever the key has none of its own."""
        allowance = KeyAllowance.objects.filter(team_id=self.team_id).first() if self.team_id else None
        if allowance is None:
            return
        if self.token_budget is None and self.cost_budget is None:
            self.budget_period = allowance.budget_period
        for field in Limits.LIMITS:
            if getattr(self, field) is None:
                setattr(self, field, getattr(allowance, field))

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
    they may hold at once, and the limits each key they make gets. A row belongs to a user
    or to a team: a team's is the default for its members' keys (a key made for the team,
    on the page or in the admin), a user's own row comes before it. Without either a user
    may hold ``SELF_SERVICE_MAX_KEYS`` keys, each without limits of its own (their own,
    their team's and the deployment's still apply); the models are those their chat key
    may use."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="key_allowance")
    team = models.OneToOneField(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="key_allowance")
    max_keys = models.PositiveIntegerField(default=5, help_text="Active keys the user may hold at once; 0 = none.")
    max_concurrency = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = no per-key limit.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    token_budget = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty = unlimited.")
    cost_budget = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True,
                                      help_text="In COST_CURRENCY; empty = unlimited.")
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)

    # The limits a key made on the page copies from here.
    LIMITS = Limits.LIMITS

    class Meta:
        verbose_name = "self-service key allowance"
        constraints = [models.CheckConstraint(
            condition=models.Q(user__isnull=False, team__isnull=True) | models.Q(user__isnull=True, team__isnull=False),
            name="allowance_of_a_user_or_a_team")]

    def __str__(self) -> str:
        return f"Allowance of {self.user or self.team}"

    @classmethod
    def of(cls, user, team: Team | None = None) -> KeyAllowance:
        """The allowance for ``user``'s keys (for ``team``): the user's own, else the
        team's, else the default one (not saved)."""
        rows = {(row.user_id is not None): row for row in cls.objects.filter(
            models.Q(user=user) | models.Q(team=team) if team is not None else models.Q(user=user))}
        return rows.get(True) or rows.get(False) or cls(user=user, max_keys=settings.SELF_SERVICE_MAX_KEYS)

    def key_limits(self) -> dict:
        """The limits a key made under this allowance gets."""
        return {field: getattr(self, field) for field in self.LIMITS}


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
    # The key's owner and team when it was admitted, counted by their limits. No foreign
    # key constraint: inserting a lease takes no lock on their rows, and a lease outlives
    # neither (LEASE_TTL_SECONDS).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.DO_NOTHING, db_constraint=False,
                             db_index=False, related_name="+")
    team = models.ForeignKey(Team, null=True, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                             related_name="+")
    request_id = models.CharField(max_length=128)
    holder = models.CharField(max_length=64, db_index=True, help_text="The server process holding it.")
    acquired_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        # None on user and team: the table holds the requests in flight only, a scan of it
        # is cheap, and each index would be one more to write per lease (its COMMIT
        # costs that much more on SQLite).
        indexes = [models.Index(fields=["api_key", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.request_id} · {self.holder}"


class UsageCounter(models.Model):
    """Requests and tokens of one key, user or team (its holder: exactly one of the three)
    in one time bucket (a minute, or a budget period), kept as running sums so that
    limits never scan the usage records."""

    class Kind(models.TextChoices):
        MINUTE = "minute"
        PERIOD = "period"

    api_key = models.ForeignKey(APIKey, null=True, on_delete=models.CASCADE, related_name="counters")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, null=True, on_delete=models.CASCADE, related_name="counters")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    starts_at = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    # The usage records' cost in whole 1e-10 of COST_CURRENCY (their cost's decimal
    # places): an integer, so that sums are exact on every database.
    cost_units = models.PositiveBigIntegerField(default=0)

    # The holders' columns; a counter's upsert names its holder's (accounts.limits).
    HOLDERS = ("api_key", "user", "team")

    class Meta:
        constraints = [
            *(models.UniqueConstraint(fields=[holder, "kind", "starts_at"], condition=models.Q(**{f"{holder}__isnull": False}),
                                      name=f"one_{holder}_counter_per_bucket") for holder in ("api_key", "user", "team")),
            models.CheckConstraint(condition=models.Q(api_key__isnull=False, user__isnull=True, team__isnull=True)
                                   | models.Q(api_key__isnull=True, user__isnull=False, team__isnull=True)
                                   | models.Q(api_key__isnull=True, user__isnull=True, team__isnull=False),
                                   name="counter_of_one_holder"),
        ]

    def __str__(self) -> str:
        holder = (f"key {self.api_key_id}" if self.api_key_id else f"user {self.user_id}" if self.user_id
                  else f"team {self.team_id}")
        return f"{holder} · {self.kind} from {timezone.localtime(self.starts_at):%Y-%m-%d %H:%M}"

    @property
    def cost(self) -> Decimal:
        return Decimal(self.cost_units).scaleb(-COST_PLACES)

    @classmethod
    def current_periods(cls, holders, now, holder: str = "api_key") -> dict[int, UsageCounter]:
        """Each holder's counter of its current budget period, by the holder's id (none
        yet: absent). ``holders``: keys or teams (with ``holder`` "team"); for users,
        their UserLimits (with ``holder`` "user")."""
        buckets = models.Q(pk__in=[])
        for item in holders:
            holder_id = item.user_id if holder == "user" else item.pk
            buckets |= models.Q(**{f"{holder}_id": holder_id}, starts_at=period_start(item.budget_period, now))
        return {getattr(c, f"{holder}_id"): c for c in cls.objects.filter(buckets, kind=cls.Kind.PERIOD)}


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
