from django.apps import AppConfig


class EscalationsConfig(AppConfig):
    name = "escalations"
    verbose_name = "Escalations and autonomy"

    def ready(self) -> None:
        # Imported here, not at the top: app modules that import models must wait for the
        # app registry (Django's rule for AppConfig modules).
        from django.conf import settings

        from workflows import events, gate, outbox

        from . import notify
        from .gate import PolicyGate
        from .slack import transport as slack

        gate.register(PolicyGate())
        # The summary writer calls the model: with a model server (seconds a call) it runs in
        # the model pool, like the steps that call one; the offline model's stays on the
        # default queue (it answers in microseconds).
        outbox.route(
            "escalations.tasks.write_summaries",
            lambda: settings.CELERY_MODEL_QUEUE if settings.MODEL_STEPS_ALONE else None,
        )
        events.subscribe(notify.OPENED, slack.on_opened, phase="in_transaction")
        events.subscribe(notify.CHANGED, slack.on_changed, phase="in_transaction")
        events.subscribe(notify.SUMMARISED, slack.on_changed, phase="in_transaction")
