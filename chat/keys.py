"""The API keys page (/keys/): a logged-in user makes, lists and revokes their own API
keys within the allowance an admin gave them (accounts.self_service), and sees their
usage and their teams' budgets (a team lead: each member's use and the team's days). A new key's
secret is shown once, on the page that answers its creation, with a copy button and
snippets to paste; it is never stored.

Sync views: rare page loads and form posts, in Django's sync thread; no generation runs
here."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import APIKey, KeyAllowance
from accounts.self_service import (USAGE_DAYS, KeyRefused, create_key, own_keys, own_teams, revoke_key, usable_models,
                                   usage_by_day)
from chat.views import content_security_policy
from inference.registry import registry


class NewKeyForm(forms.Form):
    name = forms.CharField(max_length=APIKey._meta.get_field("name").max_length, strip=True)
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650, label="Expires in (days)")
    models = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                       help_text="None ticked: every model you may use.")

    team = forms.TypedChoiceField(required=False, coerce=int, empty_value=None,
                                  help_text="Its requests count against the team's limits and budget too.")

    def __init__(self, *args, models: list[str], teams: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(model, model) for model in models]
        if teams:
            self.fields["team"].choices = [("", "None (your own)"), *((team.pk, team.name) for team in teams)]
        else:
            del self.fields["team"]


@content_security_policy
@login_required
@require_http_methods(["GET", "POST"])
def keys_page(request):
    catalogue = registry.specs()
    usable = usable_models(request.user, catalogue)
    teams = own_teams(request.user)
    by_id = {own.team.pk: own.team for own in teams}
    form = NewKeyForm(request.POST or None, models=usable, teams=[own.team for own in teams])
    created = secret = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                created, secret = create_key(request.user, name=form.cleaned_data["name"],
                                             expires_in_days=form.cleaned_data["expires_in_days"],
                                             models=form.cleaned_data["models"], catalogue=catalogue,
                                             team=by_id.get(form.cleaned_data.get("team")))
                status = 201
                form = NewKeyForm(models=usable, teams=[own.team for own in teams])
                teams = own_teams(request.user)
            except KeyRefused as exc:
                form.add_error(None, str(exc))
        if status != 201:
            status = 400
    allowance = KeyAllowance.of(request.user)
    context = {
        "form": form, "keys": own_keys(request.user), "created": created, "secret": secret,
        "usage": usage_by_day(request.user), "usage_days": USAGE_DAYS, "teams": teams,
        "allowance": allowance, "currency": settings.COST_CURRENCY,
        "api_base": request.build_absolute_uri("/v1"),
        "example_model": (created.allowed_models[0] if created and created.allowed_models else
                          (registry.default if registry.default in usable else (usable[0] if usable else ""))),
    }
    response = render(request, "chat/keys.html", context, status=status)
    response["Cache-Control"] = "no-store"  # the page with a secret on it stays out of every cache
    return response


@content_security_policy
@login_required
@require_POST
def revoke(request, key_id: int):
    try:
        revoke_key(request.user, key_id)
    except APIKey.DoesNotExist:
        raise Http404("No such key of yours.") from None
    return redirect("keys")
