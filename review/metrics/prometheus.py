"""Operational metrics for an operator's existing Prometheus/Grafana, computed at scrape time
from the database (the truth shared by every process), with prometheus_client's exposition."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Min
from django.utils import timezone
from prometheus_client.core import (
    CollectorRegistry,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from escalations.models import UNDECIDED_STATUSES, Decision, Escalation
from workflows.models import RunStatus, WorkflowRun

LATENCY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class CaliberCollector:
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        depth = GaugeMetricFamily(
            "caliber_queue_depth", "Undecided escalations", labels=["team", "status"]
        )
        for row in (
            Escalation.objects.filter(status__in=UNDECIDED_STATUSES)
            .values("team__slug", "status")
            .annotate(n=Count("pk"))
        ):
            depth.add_metric([row["team__slug"], row["status"]], row["n"])
        yield depth

        runs = GaugeMetricFamily("caliber_runs", "Workflow runs by status", labels=["status"])
        counts = dict(WorkflowRun.objects.values_list("status").annotate(n=Count("pk")))
        for status in RunStatus.values:
            runs.add_metric([status], counts.get(status, 0))
        yield runs

        # Worker lag: how long the oldest run that should be moving has waited for a worker.
        oldest = WorkflowRun.objects.filter(
            status__in=[RunStatus.PENDING, RunStatus.RUNNING]
        ).aggregate(t=Min("updated_at"))["t"]
        lag = GaugeMetricFamily(
            "caliber_worker_lag_seconds", "Age of the oldest pending or running run's last progress"
        )
        lag.add_metric([], (now - oldest).total_seconds() if oldest else 0.0)
        yield lag

        waits = (
            Decision.objects.filter(created_at__gte=now - timedelta(days=1))
            .annotate(
                w=ExpressionWrapper(
                    F("created_at") - F("escalation__created_at"), output_field=DurationField()
                )
            )
            .values_list("w", flat=True)
        )
        seconds = [w.total_seconds() for w in waits if w is not None]
        buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        hist = HistogramMetricFamily(
            "caliber_decision_latency_seconds",
            "Escalation created to human decision, decisions of the last 24 h",
        )
        hist.add_metric([], buckets, sum_value=sum(seconds))
        yield hist


def exposition() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CaliberCollector())
    return generate_latest(registry)
