"""Config owns settings (split by concern, strict env parsing), URLs, the ASGI routing and
the Celery app; it is the bottom layer and imports no app."""

from .celery import app as celery_app

__all__ = ["celery_app"]
