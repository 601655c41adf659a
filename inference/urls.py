from django.urls import path

from inference import views

urlpatterns = [
    path("v1/models", views.ModelListView.as_view(), name="models"),
    path("v1/models/<path:model_id>", views.ModelDetailView.as_view(), name="model-detail"),
    path("v1/chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("v1/completions", views.CompletionsView.as_view(), name="completions"),
    path("health", views.HealthView.as_view(), name="health"),
]
