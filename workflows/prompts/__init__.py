"""Prompts own the versioned prompt texts every model call renders, pinned per run, with
their evaluation cases and the record of each model call."""
