"""The machine's own limits, measured in the same run as everything else.

PostgreSQL single-row commits/s, Redis round trips/s, and a no-op Celery task round trip/s:
every other figure is read against these.
"""

from __future__ import annotations

import os
import time

from bench.harness import BenchEnv, Result

N_PG = 2000
N_REDIS = 5000
N_CELERY = 300


def run(env: BenchEnv) -> list[Result]:
    import psycopg
    import redis

    from config.celery import ping

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (id serial primary key, v int)")
        started = time.perf_counter()
        for i in range(N_PG):
            conn.execute("INSERT INTO t (v) VALUES (%s)", (i,))
        pg = N_PG / (time.perf_counter() - started)

    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    started = time.perf_counter()
    for _ in range(N_REDIS):
        r.ping()
    rtt = N_REDIS / (time.perf_counter() - started)

    with env.workers(n=1, concurrency=2):
        ping.delay().get(timeout=30)  # warm
        started = time.perf_counter()
        for _ in range(N_CELERY):
            ping.delay().get(timeout=30)
        serial = N_CELERY / (time.perf_counter() - started)
        started = time.perf_counter()
        pending = [ping.delay() for _ in range(N_CELERY)]
        for p in pending:
            p.get(timeout=60)
        parallel = N_CELERY / (time.perf_counter() - started)

    return [
        Result("postgres_commits_per_s", pg, "commits/s", notes="single-row INSERT, autocommit"),
        Result("redis_round_trips_per_s", rtt, "rt/s", notes="PING, one connection"),
        Result(
            "celery_noop_round_trips_per_s",
            serial,
            "rt/s",
            notes="send, run, fetch result; one at a time; 1 worker x2",
        ),
        Result(
            "celery_noop_throughput_per_s",
            parallel,
            "tasks/s",
            notes=f"{N_CELERY} in flight; 1 worker x2",
        ),
    ]
