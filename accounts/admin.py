"""The admin for operators: API keys (with their usage right now), teams, users' limits,
the usage records, the leases of requests in flight, and the usage dashboard.

Limit scopes and usage counters are internal bookkeeping and are not registered; a
key's counters show up as "tokens this period" on the key itself.
"""

from __future__ import annotations

import csv

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, DateTimeField, F, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts import dashboard
from accounts.models import (APIKey, BudgetPeriod, KeyAllowance, Lease, ModelPrice, Team, TeamMembership,
                             UsageCounter, UsageRecord, UserLimits, period_start)

# --- API keys ------------------------------------------------------------------------


class ModelListField(forms.CharField):
    """The key's allowed models as "a, b" in the form, a JSON list in the database."""

    def prepare_value(self, value):
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value):
        text = super().to_python(value)
        return [model.strip() for model in text.split(",") if model.strip()]


class APIKeyForm(forms.ModelForm):
    allowed_models = ModelListField(
        required=False, help_text="Comma-separated model ids this key may use; empty = all models.")

    class Meta:
        model = APIKey
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        owner, team = cleaned.get("owner"), cleaned.get("team")
        if owner is not None and team is not None and not team.members.filter(pk=owner.pk).exists():
            self.add_error("team", f"{owner.get_username()} is not a member of {team}.")
        return cleaned


def _tokens_this_period(holder: str) -> dict:
    """The annotations ``current_period_start`` and ``tokens_this_period`` of keys or
    teams (``holder``: their counters' field), as a subquery: one query a page."""
    now = timezone.now()
    # Each holder's current budget period starts at a moment that depends on its period.
    current_period_start = Case(
        *[When(budget_period=period, then=Value(period_start(period, now))) for period in BudgetPeriod.values],
        output_field=DateTimeField(),
    )
    period_tokens = UsageCounter.objects.filter(
        **{holder: OuterRef("pk")}, kind=UsageCounter.Kind.PERIOD, starts_at=OuterRef("current_period_start"),
    ).values("tokens")[:1]
    return {"current_period_start": current_period_start, "tokens_this_period": Coalesce(Subquery(period_tokens), 0)}


def with_usage_now(queryset):
    """Annotate keys with ``tokens_this_period`` and ``in_flight_now``, as subqueries so
    that a page of keys costs one query, not two per key."""
    live_leases = (Lease.objects.filter(api_key=OuterRef("pk"), expires_at__gt=timezone.now())
                   .order_by().values("api_key").annotate(count=Count("pk")).values("count"))
    return queryset.annotate(**_tokens_this_period("api_key"), in_flight_now=Coalesce(Subquery(live_leases), 0))


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    form = APIKeyForm
    # What identifies a key (name and prefix in one column, as keys are named everywhere)
    # and its use now: narrow enough to fit beside the admin's sidebar and filters in a
    # 1280 px window. Limits, expiry and last use are on the key's own page.
    # (A key's team is a filter and a search term, not a column: no room for it.)
    list_display = ["key", "owner", "active", "tokens_this_period", "in_flight_now"]
    list_filter = ["is_active", "kind", "is_admin", ("owner", admin.RelatedOnlyFieldListFilter),
                   ("team", admin.RelatedOnlyFieldListFilter), "budget_period"]
    search_fields = ["name", "prefix", "owner__username", "team__name"]
    list_select_related = ["owner", "team"]
    actions = ["revoke_keys", "reactivate_keys"]
    limits_fieldset = ("Limits", {"fields": [
        "max_concurrency", "allowed_models", "requests_per_minute", "tokens_per_minute",
        "token_budget", "cost_budget", "budget_period",
    ]})
    # hashed_secret is never listed here: it is not editable and not shown anywhere.
    readonly_fields = ["prefix", "kind", "created_at", "last_used_at", "revoked_at", "tokens_this_period", "in_flight_now"]

    def get_queryset(self, request):
        return with_usage_now(super().get_queryset(request))

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            # No secret field: it is generated on save and shown once.
            return [(None, {"fields": ["name", "owner", "team", "expires_at", "is_admin"]}), self.limits_fieldset]
        return [
            (None, {"fields": ["name", "prefix", "kind", "owner", "team", "is_active", "is_admin", "created_at",
                               "last_used_at", "expires_at", "revoked_at"]}),
            self.limits_fieldset,
            ("Usage now", {"fields": ["tokens_this_period", "in_flight_now"]}),
        ]

    def save_model(self, request, obj, form, change):
        if change:
            # Keep revoked_at in step when the checkbox, not an action, revokes the key.
            if "is_active" in form.changed_data:
                obj.revoked_at = None if obj.is_active else timezone.now()
            obj.save()
            return
        obj.fill_from_team()  # the limits left empty: the team's defaults for members' keys
        secret = obj.set_new_secret()
        obj.save()
        # The only time the secret exists: it reaches the admin in a one-time message
        # (consumed by the next page) and is stored nowhere.
        messages.warning(request, format_html(
            'The key for “{}” is <code class="new-api-key">{}</code>. '
            "Copy it now: it will not be shown again.",
            obj.name, secret,
        ))

    @admin.display(description="Key", ordering="name")
    def key(self, key):
        return str(key)

    @admin.display(description="Active", boolean=True, ordering="is_active")
    def active(self, key):
        return key.is_active

    @admin.display(description="Tokens this period", ordering="tokens_this_period")
    def tokens_this_period(self, key):
        return key.tokens_this_period

    @admin.display(description="In flight", ordering="in_flight_now")
    def in_flight_now(self, key):
        return key.in_flight_now

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        keys = [key for key in queryset if key.is_active]
        for key in keys:
            key.revoke()
        self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected keys", permissions=["change"])
    def reactivate_keys(self, request, queryset):
        keys = [key for key in queryset if not key.is_active]
        for key in keys:
            key.reactivate()
        self.message_user(request, f"Reactivated {len(keys)} key(s).", messages.SUCCESS)


# --- Read-only models ----------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by staff with the view permission; written only by the server."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Lease)
class LeaseAdmin(ReadOnlyAdmin):
    list_display = ["request_id", "api_key", "holder", "acquired_at", "expires_at", "is_live"]
    list_filter = ["holder"]
    search_fields = ["request_id", "api_key__prefix", "api_key__name"]
    list_select_related = ["api_key"]
    ordering = ["-acquired_at"]

    @admin.display(description="Live", boolean=True)
    def is_live(self, lease):
        # An expired lease is one whose process died; it no longer counts.
        return lease.expires_at > timezone.now()


CSV_COLUMNS = [
    "started_at", "request_id", "key_prefix", "key_name", "model", "endpoint", "status_code", "error_code",
    "streamed", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "finish_reason",
    "duration_ms", "time_to_first_token_ms", "client_disconnected", "user", "cost",
]


def spreadsheet_safe(value):
    """Defuse text a spreadsheet would run as a formula (the client chooses ``user``)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_row(record: UsageRecord) -> list:
    return [spreadsheet_safe(value) for value in [
        record.started_at.isoformat(), record.request_id, record.key_prefix,
        record.api_key.name if record.api_key else "", record.model, record.endpoint,
        record.status_code, record.error_code, record.streamed, record.prompt_tokens,
        record.completion_tokens, record.cached_tokens, record.total_tokens, record.finish_reason,
        record.duration_ms, record.time_to_first_token_ms if record.time_to_first_token_ms is not None else "",
        record.client_disconnected, record.user, record.cost if record.cost is not None else "",
    ]]


def csv_response(records) -> HttpResponse:
    filename = timezone.now().strftime("usage-%Y%m%d-%H%M%S.csv")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for record in records.select_related("api_key").iterator(chunk_size=2000):
        writer.writerow(csv_row(record))
    return response


def milliseconds(value: float | None) -> str | None:
    """A duration as people read it: "6.3 ms" (the record keeps the clock's digits)."""
    return None if value is None else f"{value:.1f} ms"


@admin.register(KeyAllowance)
class KeyAllowanceAdmin(admin.ModelAdmin):
    """What each user may make on the API keys page: without a row here (theirs, or their
    team's for the team's keys), a user may hold SELF_SERVICE_MAX_KEYS keys without
    limits of their own."""

    list_display = ["__str__", "max_keys", "max_concurrency", "requests_per_minute", "tokens_per_minute",
                    "token_budget", "cost_budget", "budget_period"]
    search_fields = ["user__username", "team__name"]
    autocomplete_fields = ["user", "team"]


# --- Teams and users' limits ------------------------------------------------------------


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    autocomplete_fields = ["user"]
    extra = 1


class TeamKeyAllowanceInline(admin.StackedInline):
    model = KeyAllowance
    fk_name = "team"
    exclude = ["user"]
    verbose_name = verbose_name_plural = "Defaults for members' keys"
    extra = 0
    max_num = 1


def with_team_usage_now(queryset):
    """Annotate teams with ``tokens_this_period`` and ``members_count``."""
    members = (TeamMembership.objects.filter(team=OuterRef("pk")).order_by().values("team")
               .annotate(count=Count("pk")).values("count"))
    return queryset.annotate(**_tokens_this_period("team"), members_count=Coalesce(Subquery(members), 0))


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Teams: their members and leads, the limits all their keys share, and the limits
    their members' keys get by default."""

    list_display = ["name", "members_count", "token_budget", "cost_budget", "budget_period", "tokens_this_period"]
    search_fields = ["name", "members__username"]
    inlines = [TeamMembershipInline, TeamKeyAllowanceInline]
    fieldsets = [(None, {"fields": ["name"]}),
                 ("Limits across the team's keys", {"fields": list(Team.LIMITS)})]

    def get_queryset(self, request):
        return with_team_usage_now(super().get_queryset(request)).distinct()

    @admin.display(description="Members", ordering="members_count")
    def members_count(self, team):
        return team.members_count

    @admin.display(description="Tokens this period", ordering="tokens_this_period")
    def tokens_this_period(self, team):
        return team.tokens_this_period


class UserLimitsInline(admin.StackedInline):
    model = UserLimits
    verbose_name = verbose_name_plural = "Limits across all the user's keys"
    extra = 0
    max_num = 1


class UserTeamsInline(admin.TabularInline):
    model = TeamMembership
    verbose_name, verbose_name_plural = "team", "Teams"
    extra = 0


class UserAdmin(auth_admin.UserAdmin):
    """Django's user admin, with the user's limits and teams."""

    inlines = [*auth_admin.UserAdmin.inlines, UserLimitsInline, UserTeamsInline]


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), UserAdmin)


def money(value) -> str | None:
    """An amount as people read it: "0.000123 USD", to six decimal places (a record keeps
    ten)."""
    return None if value is None else f"{value:.6f} {settings.COST_CURRENCY}"


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["model", "prompt_per_million", "completion_per_million", "currency", "source", "updated_at"]
    readonly_fields = ["source", "updated_at"]
    search_fields = ["model"]

    @admin.display(description="Currency")
    def currency(self, price):
        return settings.COST_CURRENCY

    def save_model(self, request, obj, form, change):
        # Edited here: MODELS_CONFIG no longer updates it (accounts.prices.follow_catalogue).
        obj.source = ModelPrice.Source.ADMIN
        super().save_model(request, obj, form, change)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    # Narrow enough to fit beside the admin's sidebar and filters in a 1280 px window;
    # every field is on the record's own page.
    list_display = ["started", "key", "model", "status", "tokens", "cost_", "duration"]
    list_filter = ["api_key", "model", "status_code", "endpoint", "streamed", ("started_at", admin.DateFieldListFilter)]
    date_hierarchy = "started_at"
    # Request ids are pasted whole from logs or X-Request-ID: exact match uses the index.
    # A key is found by its prefix or by any part of its name, a person by username.
    search_fields = ["=request_id", "^key_prefix", "api_key__name", "=api_key__owner__username"]
    # The record's own page: every field, the durations rounded as in the list.
    fields = [{"duration_ms": "duration", "time_to_first_token_ms": "ttft"}.get(field.name, field.name)
              for field in UsageRecord._meta.fields if not field.primary_key]
    readonly_fields = ["duration", "ttft"]
    list_select_related = ["api_key"]
    actions = ["export_selected"]

    def lookup_allowed(self, lookup, value, request=None):
        # The dashboard's top people and teams link to their records by the keys' owner or team.
        return lookup in dashboard.TOP_LOOKUPS or super().lookup_allowed(lookup, value, request)

    def get_urls(self):
        # Before the default URLs, whose "<object_id>/" would catch these paths.
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="accounts_usagerecord_dashboard"),
            path("export/", self.admin_site.admin_view(self.export_view), name="accounts_usagerecord_export"),
        ] + super().get_urls()

    # As text, which may wrap between date and time (the admin keeps a date column on one
    # line), with seconds, as in the logs.
    @admin.display(description="Started at", ordering="started_at")
    def started(self, record):
        return timezone.localtime(record.started_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="Key", ordering="key_prefix")
    def key(self, record):
        return str(record.api_key) if record.api_key else f"{record.key_prefix}… (deleted)"

    @admin.display(description="Status", ordering="status_code")
    def status(self, record):
        return record.status_code

    @admin.display(description="Tokens", ordering=F("prompt_tokens") + F("completion_tokens"))
    def tokens(self, record):
        return record.total_tokens

    @admin.display(description="Cost", ordering="cost")
    def cost_(self, record):
        return money(record.cost)

    @admin.display(description="Duration", ordering="duration_ms")
    def duration(self, record):
        return milliseconds(record.duration_ms)

    @admin.display(description="Time to first token", ordering="time_to_first_token_ms")
    def ttft(self, record):
        return milliseconds(record.time_to_first_token_ms)

    @admin.action(description="Export selected records as CSV")
    def export_selected(self, request, queryset):
        return csv_response(queryset)

    def export_view(self, request):
        """All records that the changelist shows with the same query string (filters,
        search, date drill-down), not only one page, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:accounts_usagerecord_changelist") + "?e=1")
        return csv_response(changelist.queryset)

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        start, end = dashboard.default_range()
        form = dashboard.RangeForm(request.GET or None, initial={"start": start, "end": end})
        filters = {}
        if form.is_valid():
            start, end = form.cleaned_data["start"], form.cleaned_data["end"]
            filters = {name: form.cleaned_data[name] for name in dashboard.FILTERS}
        if request.GET.get("format") == "csv":
            return dashboard.aggregates_csv(start, end, filters)
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.opts,
            "form": form,
            "quick_ranges": dashboard.quick_ranges(filters),
            **dashboard.dashboard_context(start, end, filters),
        }
        return TemplateResponse(request, "admin/accounts/usagerecord/dashboard.html", context)
