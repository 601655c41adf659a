"""The admin site (the default ``admin.site``, through :class:`AdminConfig` in
INSTALLED_APPS): llmserver's name on its pages, and query strings without NUL.

PostgreSQL refuses a NUL in text, so a filter such as ``?model=%00`` would fail the
page's query. Django's search form already refuses a NUL in ``q`` ("Null characters are
not allowed."); the site refuses it the same way in every parameter of every admin page
(changelists' filters and date drill-down, the dashboard, autocomplete): the parameter
is left out and the page says why.
"""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig
from django.core.validators import ProhibitNullCharactersValidator
from django.http import QueryDict

NUL = "\x00"


class AdminSite(admin.AdminSite):
    site_header = "llmserver administration"
    site_title = "llmserver admin"
    index_title = "llmserver"
    # The stock index with a link to the usage dashboard above the app list.
    index_template = "admin/accounts/index.html"

    def admin_view(self, view, cacheable=False):
        return super().admin_view(_refusing_nul(view), cacheable)


class AdminConfig(DjangoAdminConfig):
    default_site = "llmserver.admin_site.AdminSite"


def _refusing_nul(view):
    @wraps(view)
    def inner(request, *args, **kwargs):
        pairs = [(name, value) for name, values in request.GET.lists() for value in values]
        kept = [(name, value) for name, value in pairs if NUL not in name and NUL not in value]
        if len(kept) < len(pairs):
            request.GET = QueryDict(urlencode(kept))
            messages.error(request, ProhibitNullCharactersValidator.message)
        return view(request, *args, **kwargs)

    return inner
