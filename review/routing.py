from django.urls import path

from .consumers import ReviewQueueConsumer

websocket_urlpatterns = [
    path("ws/review/", ReviewQueueConsumer.as_asgi()),
]
