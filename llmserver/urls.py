from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("inference.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "llmserver.errors.handler400"
handler403 = "llmserver.errors.handler403"
handler404 = "llmserver.errors.handler404"
handler500 = "llmserver.errors.handler500"
