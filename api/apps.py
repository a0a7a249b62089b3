from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The JSON API for agents outside Caliber (/api/v1/)."""

    name = "api"
    verbose_name = "Agent API"
