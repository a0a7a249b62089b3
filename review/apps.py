from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "review"
    verbose_name = "Review desk"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which must wait for
        # the app registry (Django's rule for AppConfig modules).
        from escalations import notify
        from workflows import events

        from .live import announce_escalation

        events.subscribe(notify.OPENED, announce_escalation)
        events.subscribe(notify.CHANGED, announce_escalation)
        events.subscribe(notify.SUMMARISED, announce_escalation)
