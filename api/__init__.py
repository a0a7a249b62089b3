"""The API owns the JSON interface for agents outside Caliber: tokens, submitted actions and
their results, decision webhooks and long-polls (subscribed to escalation events)."""
