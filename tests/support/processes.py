"""The app's own processes — a celery worker, a daphne server — started for real and stopped,
for the test suite and the benchmarks alike.

Each start waits until the process can do its job (the worker said "ready.", daphne accepts
connections) and, if it never gets there, stops it and raises with the tail of its log: a
half-started worker must not be left holding the test database.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it does not go within 10 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _start(
    what: str,
    argv: list[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    timeout: float,
    append: bool,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the log's descriptor: ours is closed straight away.
    with open(log_path, "ab" if append else "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, for a caller that kills the worker with its children.
            start_new_session=new_session,
        )
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{what} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


def start_worker(
    *,
    env: Mapping[str, str],
    log_path: Path,
    queue: str | None = None,
    pool: str = "prefork",
    concurrency: int | None = 2,
    name: str | None = None,
    timeout: float = 30,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """A `celery worker` on `queue` (else `env["CELERY_QUEUE"]`), first its priority queue
    (what follows a person's decision), last its model queue (steps that call a model: a lone
    worker is their pool too), once it is ready for tasks."""
    queue = queue or env["CELERY_QUEUE"]
    queues = f"{queue}-priority,{queue},{queue}-model"
    argv = ["celery", "-A", "config", "worker", f"--pool={pool}", "-Q", queues]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if name is not None:
        argv += ["-n", name]
    # INFO: the "ready." line is what says the worker consumes.
    argv += ["--loglevel=INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"]
    return _start(
        "celery worker",
        argv,
        env=env,
        log_path=log_path,
        ready=lambda: b"ready." in log_path.read_bytes(),
        timeout=timeout,
        append=False,
        new_session=new_session,
    )


def start_daphne(
    *,
    env: Mapping[str, str],
    log_path: Path,
    port: int,
    timeout: float = 30,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """Daphne serving the real ASGI app (HTTP and websockets) on 127.0.0.1:`port`, once it
    accepts connections. `append`: keep the log of an earlier start on the same port."""
    argv = ["daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    return _start(
        "daphne",
        argv,
        env=env,
        log_path=log_path,
        ready=lambda: listening(port, 0.2),
        timeout=timeout,
        append=append,
    )
