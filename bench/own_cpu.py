"""CPU time of the processes doing a batch's work, not the whole machine's.

The machine's busy time (/proc/stat) over a batch counts every process on the machine: on a
shared one, whatever else runs lands in "CPU per run". `OwnCpu` samples, every `interval`
seconds, the processes that serve the bench: this process (its threads), every process
descended from it (the celery workers and their pool children, LangGraph's processes), and
the PostgreSQL backends connected to the bench database (their command line names it).
A process seen first after the batch began counts from zero; one that exits between two
samples loses what it spent since the last one (at most `interval` of its CPU: backends
and workers here live for the whole batch, the bench's starter threads' backends for a
phase). Redis is shared with other users of the machine and left out (< 1% of a run).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

HZ = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, str, int, float] | None:
    """(command name, start time, parent pid, utime + stime in ms), None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.find("(") + 1 : raw.rfind(")")]
    fields = raw[raw.rfind(")") + 2 :].split()
    # fields[0] is the state (field 3): ppid is field 4, utime 14, stime 15, starttime 22.
    return comm, fields[19], int(fields[1]), (int(fields[11]) + int(fields[12])) * 1000 / HZ


class OwnCpu:
    def __init__(self, database: str, *, interval: float = 0.1) -> None:
        self.database = database.encode()
        self.interval = interval
        self.me = os.getpid()
        self._first: dict[tuple[int, str], float] = {}
        self._last: dict[tuple[int, str], float] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._sampler_ms = 0.0  # the sampler's own CPU, taken off this process's
        self._kinds: dict[int, str] = {}  # pid -> "bench", "workers" or "postgres"
        self._kind_of: dict[tuple[int, str], str] = {}
        self._unrelated: set[int] = set()
        self.split: dict[str, float] = {}  # CPU ms by kind
        self.ms = 0.0

    def _ours(self) -> dict[int, tuple[str, float, str]]:
        """Our processes now: (start time, CPU ms, what it is) by pid. Only processes not
        seen before are classified (a listing of /proc, then our few): a full scan of a
        busy machine's /proc costs ~10 ms."""
        stats: dict[int, tuple[str, str, int, float]] = {}
        for pid in (int(e) for e in os.listdir("/proc") if e.isdigit()):
            if pid not in self._unrelated and (st := _stat(pid)) is not None:
                stats[pid] = st
        # Descendants first, whatever their pids' order (pids wrap: a child's may be lower
        # than its parent's): until no process is added.
        self._kinds.setdefault(self.me, "bench")
        grew = True
        while grew:
            grew = False
            for pid, (_comm, _start, ppid, _ms) in stats.items():
                if pid not in self._kinds and ppid in self._kinds:
                    self._kinds[pid] = "workers"
                    grew = True
        found: dict[int, tuple[str, float, str]] = {}
        for pid, (comm, start, _ppid, ms) in stats.items():
            kind = self._kinds.get(pid)
            if kind is None and comm == "postgres":
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if not cmd.startswith(b"postgres: "):
                    continue  # just forked, not titled yet: classified at the next look
                if b" " + self.database + b" " in cmd:
                    kind = self._kinds[pid] = "postgres"
                elif b"127.0.0.1" in cmd and (b"authentication" in cmd or b"startup" in cmd):
                    continue  # a backend not yet connected to its database
            if kind is None:
                self._unrelated.add(pid)
                continue
            found[pid] = (start, ms, kind)
        return found

    def _sample(self) -> None:
        for pid, (start, ms, kind) in self._ours().items():
            key = (pid, start)
            if key not in self._first:
                self._first[key] = ms if not self._started else 0.0
                self._kind_of[key] = kind
            self._last[key] = ms

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            t0 = time.thread_time()
            self._sample()
            self._sampler_ms += (time.thread_time() - t0) * 1000

    def __enter__(self) -> OwnCpu:
        self._sample()
        self._started = True
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        split = {"bench": -self._sampler_ms, "workers": 0.0, "postgres": 0.0}
        for key, last in self._last.items():
            split[self._kind_of[key]] += last - self._first[key]
        self.split = split
        self.ms = sum(split.values())
