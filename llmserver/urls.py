from django.contrib import admin
from django.urls import include, path

from accounts.logins import AdminLoginForm
from inference.admin_views import models_page
from inference.openapi import OpenAPIView

# The admin's login refuses a username or address after too many failures, as the chat
# page's does (accounts/logins.py).
admin.site.login_form = AdminLoginForm

urlpatterns = [
    path("", include("inference.urls")),
    path("openapi.json", OpenAPIView.as_view(), name="openapi"),
    path("", include("chat.urls")),
    path("admin/models/", admin.site.admin_view(models_page), name="admin-models"),
    path("admin/", admin.site.urls),
    # Static files are answered by WhiteNoise's middleware before URLs are resolved
    # (settings.py, STORAGES); one it does not have ends here, as a 404.
]

handler400 = "llmserver.errors.handler400"
handler403 = "llmserver.errors.handler403"
handler404 = "llmserver.errors.handler404"
handler500 = "llmserver.errors.handler500"
