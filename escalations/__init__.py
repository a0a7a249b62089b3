"""Escalations own deciding what an agent may do alone and asking people about the rest:
teams, agent profiles, autonomy policies and their evaluation (the gate registered with the
engine), escalations, decisions, SLAs, summaries, and the Slack transport."""
