"""Every app's WebSocket routes, in one list for config.asgi."""

from apps.chat.routing import websocket_urlpatterns as chat_ws
from apps.notifications.routing import websocket_urlpatterns as notifications_ws
from apps.ops.routing import websocket_urlpatterns as ops_ws

websocket_urlpatterns = [*ops_ws, *notifications_ws, *chat_ws]
