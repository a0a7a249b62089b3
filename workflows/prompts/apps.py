from django.apps import AppConfig


class PromptsConfig(AppConfig):
    """Versioned prompts, their evaluation cases, and the versions each run is pinned to."""

    name = "workflows.prompts"
    label = "prompts"
    verbose_name = "Prompts"
