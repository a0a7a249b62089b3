from django.apps import AppConfig


class SlackConfig(AppConfig):
    """Slack as a notifier and a decision channel: a tiny app of its own (healthchecks style)."""

    name = "escalations.slack"
    label = "slack"
    verbose_name = "Slack"
