from django.urls import path

from inference import views

urlpatterns = [
    path("v1/models", views.ModelListView.as_view(), name="models"),
    # Before the detail route, whose <path:...> would take these too.
    path("v1/models/loaded", views.LoadedModelsView.as_view(), name="models-loaded"),
    path("v1/models/<path:model_id>/load", views.LoadModelView.as_view(), name="model-load"),
    path("v1/models/<path:model_id>/unload", views.UnloadModelView.as_view(), name="model-unload"),
    path("v1/models/<path:model_id>", views.ModelDetailView.as_view(), name="model-detail"),
    path("v1/chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("v1/completions", views.CompletionsView.as_view(), name="completions"),
    path("v1/responses", views.ResponsesView.as_view(), name="responses"),
    path("tokenize", views.TokenizeView.as_view(), name="tokenize"),
    path("detokenize", views.DetokenizeView.as_view(), name="detokenize"),
    path("health", views.HealthView.as_view(), name="health"),
    path("metrics", views.MetricsView.as_view(), name="metrics"),
]
