from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The JSON API for agents outside Caliber (/api/v1/)."""

    name = "api"
    verbose_name = "Agent API"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which must wait for
        # the app registry (Django's rule for AppConfig modules).
        from escalations import notify
        from escalations.actions import read_along
        from workflows import events

        from . import hooks
        from .actions.webhook_delivery import WEBHOOK_READ_ALONG, webhook_read_along_sql

        read_along(WEBHOOK_READ_ALONG, webhook_read_along_sql())
        events.subscribe(notify.CHANGED, hooks.queue_webhook, phase="in_transaction")
        events.subscribe(notify.CHANGED, hooks.wake_long_polls)
