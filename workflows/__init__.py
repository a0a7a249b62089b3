"""Workflows own running agent work: specs, runs and their steps, versioned state, actions and
the effect ledger, the trace, the engine and its tasks, the model client and prompts; they
know nothing of policies, escalations, the review desk or the API (see workflows.gate and
workflows.events for how those plug in)."""
