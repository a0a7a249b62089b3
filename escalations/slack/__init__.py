"""Slack: escalations posted where reviewers already are, decided from the message.

On when SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET are set (in the web server and the
workers). The Slack app needs the bot scopes `chat:write` (post and update), `users:read`
and `users:read.email` (match a Slack user to a reviewer by email, once), the bot invited to
each team's channel (Team.slack_channel: `#name` or a channel ID), and Interactivity's
request URL set to `<CALIBER_BASE_URL>/slack/interactions/`. CALIBER_BASE_URL makes the
links in messages absolute.

Layout: transport (the notify hooks: outbox rows, enqueue after commit), delivery (post /
update, one recorded attempt each, retries), tasks (Celery), blocks + mrkdwn (the message),
views + interactions (the signed endpoint and what a click does), identity (Slack user to
reviewer), models, admin.
"""
