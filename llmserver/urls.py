from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path

from inference.admin_views import models_page
from inference.openapi import OpenAPIView

urlpatterns = [
    path("", include("inference.urls")),
    path("openapi.json", OpenAPIView.as_view(), name="openapi"),
    path("", include("chat.urls")),
    path("admin/models/", admin.site.admin_view(models_page), name="admin-models"),
    path("admin/", admin.site.urls),
    # Static files (the admin's CSS and JS) straight from the apps, with DEBUG off too.
    # Django's view is sync, but only these requests use it; WhiteNoise's middleware is
    # sync-only and would push every API request through Django's sync thread.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]

handler400 = "llmserver.errors.handler400"
handler403 = "llmserver.errors.handler403"
handler404 = "llmserver.errors.handler404"
handler500 = "llmserver.errors.handler500"
