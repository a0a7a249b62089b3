"""Worker memory over a long stream of runs: resident memory of every pool child after a
warm-up, and again at the end; growth should stay under 10%.

The runs are the peer comparison's 3-step auto workflow (bench.peers.caliber_flow: propose,
policy says act alone, execute once through the effect ledger), fed so that about 100 are in
flight at a time. Bounded in time: 20,000 runs or BENCH_SOAK_SECONDS (900 s), whichever comes
first; the figure says how many runs it covered. Runs once per `make bench`, not per repetition.
"""

from __future__ import annotations

import os
import time

from bench.harness import BenchEnv, Result

REPEAT = 1  # one long run says more than three short ones
IN_FLIGHT = 100


def _rss(env: BenchEnv, pids: list[int]) -> dict[int, int]:
    return {pid: env.rss_kib(pid) for pid in pids}


def run(env: BenchEnv) -> list[Result]:
    from bench.peers.bench_side_by_side import _policy
    from bench.peers.caliber_flow import AUTO
    from workflows.actions import start_run
    from workflows.models import PolicyOutcome, RunStatus, WorkflowRun

    total = env.scale(int(os.environ.get("BENCH_SOAK_RUNS", "20000")), 60)
    warm = env.scale(1000, 20)
    budget = env.scale(int(os.environ.get("BENCH_SOAK_SECONDS", "900")), 60)
    _policy(PolicyOutcome.AUTO, AUTO)
    runs = WorkflowRun.objects.filter(workflow=AUTO)

    def done() -> int:
        return runs.filter(status=RunStatus.SUCCEEDED).count()

    def feed(upto: int, started: int, deadline: float) -> int:
        """Keep about IN_FLIGHT runs queued until `upto` have finished (or time is up)."""
        while True:
            finished = done()
            if finished >= upto or time.monotonic() > deadline:
                return started
            failed = runs.filter(status=RunStatus.FAILED).first()
            if failed is not None:
                raise RuntimeError(f"soak run {failed.pk} failed: {failed.error}")
            want = min(upto, finished + IN_FLIGHT) - started
            for _ in range(max(want, 0)):
                start_run(workflow=AUTO, input={"item": f"soak-{started}"})
                started += 1
            if want <= 0:
                time.sleep(0.05)

    t0 = time.monotonic()
    deadline = t0 + budget
    with env.workers() as procs:
        pids = env.worker_pids(procs)
        started = feed(warm, 0, deadline + 600)
        baseline = _rss(env, pids)
        base_done = done()
        feed(total, started, deadline)
        elapsed = time.monotonic() - t0
        end = _rss(env, env.worker_pids(procs))
    covered = done()
    same = [pid for pid in baseline if pid in end and baseline[pid]]
    replaced = len(set(end) - set(baseline))
    growth = max(((end[p] - baseline[p]) / baseline[p] for p in same), default=float("nan"))
    note = (
        f"{covered} runs in {elapsed:.0f} s ({covered - base_done} after the baseline); "
        f"{len(same)} pool children"
        + (f"; {replaced} child(ren) replaced during the soak" if replaced else "")
        + ("" if covered >= total else f"; stopped by the {budget} s bound")
    )
    return [
        Result(
            "worker_rss_growth_pct",
            growth * 100,
            "%",
            target="< 10%",
            better="lower",
            notes=note,
        ),
        Result(
            "worker_rss_baseline",
            max(baseline.values(), default=0) / 1024,
            "MiB",
            better="lower",
            notes=f"largest pool child after {warm} warm-up runs",
        ),
        Result(
            "worker_rss_end",
            max(end.values(), default=0) / 1024,
            "MiB",
            better="lower",
        ),
        Result("runs_covered", covered, "runs", notes=note),
    ]
