"""A clock that moves only when told: time budgets and waits tested without waiting."""

from __future__ import annotations


class FakeClock:
    """`monotonic()` and `time()` read `now`; `sleep(s)` records the wait and moves `now`."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds
