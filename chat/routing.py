from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.urls import path

from chat.consumers import ChatConsumer
from chat.origin import SameOriginOnly

websocket_urlpatterns = [
    path("ws/chat", ChatConsumer.as_asgi()),
]

# The chat page's socket: only a page of this site (chat.origin) may open it, then the
# session says who it is.
websocket_application = SameOriginOnly(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
