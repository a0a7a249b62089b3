"""The machine's own limits, measured in the same run as everything else.

PostgreSQL single-row commits/s and query round trips/s, Redis round trips/s, and a no-op
Celery task round trip/s (one at a time, and many in flight) on the same worker processes the
other benchmarks use: every other figure is read against these.
"""

from __future__ import annotations

import os
import time

from bench.harness import (
    CELERY_RTT,
    CELERY_THROUGHPUT,
    PG_COMMITS,
    PG_QUERIES,
    REDIS_RTT,
    BenchEnv,
    Result,
)


def run(env: BenchEnv) -> list[Result]:
    import psycopg
    import redis

    from config.celery import ping

    n_pg = env.scale(3000, 50)
    n_redis = env.scale(5000, 50)
    n_celery = env.scale(400, 10)

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        # A real (logged) table: a temp table's commits skip the WAL flush a real row pays.
        conn.execute("DROP TABLE IF EXISTS bench_limits_t")
        conn.execute("CREATE TABLE bench_limits_t (id serial primary key, v int)")
        started = time.perf_counter()
        for i in range(n_pg):
            conn.execute("INSERT INTO bench_limits_t (v) VALUES (%s)", (i,))
        pg = n_pg / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(n_pg):
            conn.execute("SELECT 1").fetchone()
        pg_rtt = n_pg / (time.perf_counter() - started)
        conn.execute("DROP TABLE bench_limits_t")

    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    started = time.perf_counter()
    for _ in range(n_redis):
        r.ping()
    rtt = n_redis / (time.perf_counter() - started)

    with env.workers():
        for _ in range(env.process_count * 2):
            ping.delay().get(timeout=30)  # warm every pool child
        started = time.perf_counter()
        for _ in range(n_celery):
            ping.delay().get(timeout=30)
        serial = n_celery / (time.perf_counter() - started)
        started = time.perf_counter()
        pending = [ping.delay() for _ in range(n_celery)]
        for p in pending:
            p.get(timeout=60)
        parallel = n_celery / (time.perf_counter() - started)

    workers = f"{env.n_workers} worker(s) x{env.concurrency}"
    return [
        Result(PG_COMMITS, pg, "commits/s", notes="single-row INSERT, autocommit, one connection"),
        Result(PG_QUERIES, pg_rtt, "rt/s", notes="SELECT 1, one connection"),
        Result(REDIS_RTT, rtt, "rt/s", notes="PING, one connection"),
        Result(
            CELERY_RTT,
            serial,
            "rt/s",
            notes=f"send, run, fetch result; one at a time; {workers}",
        ),
        Result(
            CELERY_THROUGHPUT,
            parallel,
            "tasks/s",
            notes=f"{n_celery} in flight; {workers}",
        ),
    ]
