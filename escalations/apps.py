from django.apps import AppConfig


class EscalationsConfig(AppConfig):
    name = "escalations"
    verbose_name = "Escalations and autonomy"

    def ready(self) -> None:
        # Imported here, not at the top: app modules that import models must wait for the
        # app registry (Django's rule for AppConfig modules).
        from workflows import events, gate

        from . import notify
        from .gate import PolicyGate
        from .slack import transport as slack

        gate.register(PolicyGate())
        events.subscribe(notify.OPENED, slack.on_opened, phase="in_transaction")
        events.subscribe(notify.CHANGED, slack.on_changed, phase="in_transaction")
        events.subscribe(notify.SUMMARISED, slack.on_changed, phase="in_transaction")
