from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"

    def ready(self) -> None:
        # Importing the specs registers them; the registry is code, versioned with it.
        from . import triage  # noqa: F401
