"""Metrics own the numbers about the work: daily rollups, the dashboard's queries, alerts and
the Prometheus endpoint."""
