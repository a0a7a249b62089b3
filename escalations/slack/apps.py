from django.apps import AppConfig


class SlackConfig(AppConfig):
    """Slack as a notifier and a decision channel: a tiny app of its own (healthchecks style)."""

    name = "escalations.slack"
    label = "slack"
    verbose_name = "Slack"

    def ready(self) -> None:
        # Both import models: not before the app registry is ready.
        from workflows import outbox

        from . import conf

        # Slack traffic may have workers of its own (SLACK_CELERY_QUEUE), read at each send.
        outbox.route("slack.", conf.task_queue)
