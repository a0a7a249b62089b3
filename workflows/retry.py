"""The one retry policy for sends to the outside world: how long to wait, when to stop.

Task sends (the outbox), Slack posts, agent webhooks and alert posts all retry on
`DELIVERY`; each transport keeps its own log of attempts and only asks this module when to
try next. The model client's in-call retries use the same backoff with a shorter start.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# A server's own "retry after" is honoured, but never beyond this: a misbehaving header
# must not park a delivery for a day.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: first_delay, x factor per failure, capped at max_delay.

    `max_attempts` counts every try, the first included; after that many failures the send
    is given up (the transport marks its row failed, to be re-sent by hand).
    """

    first_delay: float
    factor: float = 2.0
    max_delay: float = 300.0
    max_attempts: int = 8
    # +-20%: many sends failing together (a receiver's outage) must not retry in lockstep.
    jitter: float = 0.2

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1-based)."""
        base = min(self.max_delay, self.first_delay * self.factor ** max(failures - 1, 0))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def next_delay(self, failures: int, *, retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt after `failures` failed ones, or None: give up.

        `retry_after`: what the other side asked for (HTTP 429/503 Retry-After); it replaces
        the backoff, capped at MAX_RETRY_AFTER.
        """
        if failures >= self.max_attempts:
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        return self.backoff(failures)


# Every outbox-backed delivery. 2, 4, 8 ... 128 s: eight tries over about four minutes, the
# longest wait (with jitter, 360 s at the cap) well under the broker's visibility timeout
# (CELERY_TASK_TIME_LIMIT x 4), so a waiting retry is never re-delivered early.
DELIVERY = RetryPolicy(first_delay=2.0)
