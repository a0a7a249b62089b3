from importlib import import_module

from django.apps import AppConfig
from django.conf import settings


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"

    def ready(self) -> None:
        # Importing a spec module registers its workflows; the registry is code, versioned
        # with it. WORKFLOW_MODULES lets a deployment add its own.
        for module in settings.WORKFLOW_MODULES:
            import_module(module)
