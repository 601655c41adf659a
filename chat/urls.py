from django.contrib.auth import views as auth_views
from django.urls import path

from chat import keys, views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("keys/", keys.keys_page, name="keys"),
    path("keys/<int:key_id>/revoke/", keys.revoke, name="revoke-key"),
    path("login/", views.login_page, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
