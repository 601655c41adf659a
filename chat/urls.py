from django.contrib.auth import views as auth_views
from django.urls import path

from chat import history, keys, views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("keys/", keys.keys_page, name="keys"),
    path("keys/<int:key_id>/revoke/", keys.revoke, name="revoke-key"),
    path("chat/conversations/", history.conversation_list, name="conversations"),
    path("chat/conversations/<str:public_id>/", history.conversation, name="conversation"),
    path("chat/conversations/<str:public_id>/restore/", history.restore, name="restore-conversation"),
    path("chat/conversations/<str:public_id>/export/", history.export, name="export-conversation"),
    path("login/", views.login_page, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
