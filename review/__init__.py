"""Review owns the reviewer's browser UI: the live queue, the escalation and run pages, and the
metrics dashboard (review.metrics); it subscribes to escalation events for the live push."""
