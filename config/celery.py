"""The Celery app. Tasks are thin: they load by id and call an action (HackSoft style)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.main")

app = Celery("caliber")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="caliber.ping", ignore_result=False)
def ping() -> str:
    """A no-op round trip: the broker and a worker are alive (and the bench's yardstick)."""
    return "pong"
