from django.apps import AppConfig


class MetricsConfig(AppConfig):
    """What matters about the agents' work: completion, quality, failure modes, calibration."""

    name = "review.metrics"
    label = "metrics"
    verbose_name = "Metrics and alerts"
