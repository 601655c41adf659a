from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    # The model is not loaded here: ready() also runs for migrate, shell and tests.
    # llmserver/asgi.py loads it when the server starts.
