"""The peer: the same workload on LangGraph with its PostgreSQL checkpointer.

A 3-node graph — propose, gate (`interrupt()` when the action needs a person), execute — run
by `processes` OS processes (as many as Caliber's worker pool children), each with its own
PostgresSaver connection to the same PostgreSQL database. Approval: every process starts its
share of runs until they interrupt; once all have, each resumes its runs with
`Command(resume={"approved": True})` to the end. Auto: the gate passes, no interrupt.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any, TypedDict


class State(TypedDict, total=False):
    item: str
    needs_review: bool
    action: dict[str, Any]
    approved: bool
    result: dict[str, Any]


def build(checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def propose(state: State) -> State:
        return {
            "action": {
                "type": "peer_effect",
                "payload": {"item": state["item"]},
                "confidence": 0.9,
            }
        }

    def gate(state: State) -> State:
        if not state.get("needs_review"):
            return {"approved": True}
        decision = interrupt({"action": state["action"]})
        return {"approved": bool(decision.get("approved"))}

    def execute(state: State) -> State:
        if not state.get("approved"):
            return {"result": {"skipped": True}}
        return {"result": {"done": state["action"]["payload"]["item"]}}

    graph = StateGraph(State)
    graph.add_node("propose", propose)
    graph.add_node("gate", gate)
    graph.add_node("execute", execute)
    graph.add_edge(START, "propose")
    graph.add_edge("propose", "gate")
    graph.add_edge("gate", "execute")
    graph.add_edge("execute", END)
    return graph.compile(checkpointer=checkpointer)


def setup(conninfo: str) -> None:
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(conninfo) as saver:
        saver.setup()


def _worker(
    conninfo: str,
    prefix: str,
    indices: list[int],
    approval: bool,
    durability: str,
    barrier: Any,
    out: Any,
) -> None:
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.types import Command

    done = 0
    with PostgresSaver.from_conn_string(conninfo) as saver:
        graph = build(saver)
        barrier.wait()
        for i in indices:
            config = {"configurable": {"thread_id": f"{prefix}-{i}"}}
            result = graph.invoke(
                {"item": f"item-{i}", "needs_review": approval},
                config,
                durability=durability,
            )
            if not approval and "result" in result:
                done += 1
            elif approval and "__interrupt__" not in result:
                raise RuntimeError(f"run {i} did not interrupt: {result}")
        if approval:
            barrier.wait()  # every run is paused at the gate
            for i in indices:
                config = {"configurable": {"thread_id": f"{prefix}-{i}"}}
                result = graph.invoke(
                    Command(resume={"approved": True}), config, durability=durability
                )
                if result.get("result", {}).get("done") == f"item-{i}":
                    done += 1
        barrier.wait()
    out.put(done)


def busy_ms() -> float:
    """CPU time the machine has spent busy since boot, every core and process (/proc/stat):
    what a batch cost the machine, whoever spent it, read the same way for both systems."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) * 1000 / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    total: float  # seconds from the first start to the last run done
    started: float  # seconds until every run was started (paused at the gate, for approval)
    completed: int
    cpu_ms: float = 0.0  # the machine's busy CPU time over `total` (every process)


def run_batch(
    conninfo: str,
    *,
    n: int,
    processes: int,
    approval: bool,
    durability: str = "async",
    prefix: str = "peer",
) -> Timing:
    """N runs spread over `processes` processes; timed from a common start line."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    shares = [list(range(p, n, processes)) for p in range(processes)]
    procs = [
        ctx.Process(
            target=_worker,
            args=(conninfo, prefix, share, approval, durability, barrier, out),
            daemon=True,
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=120)  # every process imported, connected and compiled
        t0 = time.perf_counter()
        busy0 = busy_ms()
        started = 0.0
        if approval:
            barrier.wait(timeout=600)
            started = time.perf_counter() - t0
        barrier.wait(timeout=600)
        total = time.perf_counter() - t0
        busy = busy_ms() - busy0
        completed = sum(out.get(timeout=60) for _ in procs)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    if completed != n:
        raise RuntimeError(f"LangGraph: {completed} of {n} runs completed")
    return Timing(total=total, started=started or total, completed=completed, cpu_ms=busy)
