"""Scale-out mode started exactly as README says — `make run` with DATABASE_URL, REDIS_URL
and SECRET_KEY — on the test database and Redis: it comes up, a worker that dies is started
again by the supervisor, one approval goes all the way through over HTTP, and Ctrl-C stops
every process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TICKET, _test_database_url
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240.0  # migrate + seed_demo + three processes, on a loaded 2-core machine

# What the test settings put into this process's environment; `make run` must not inherit it.
_TEST_ONLY = (
    "DJANGO_SETTINGS_MODULE",
    "RUN_LEASE_SECONDS",
    "RUN_STALL_SECONDS",
    "OUTBOX_GRACE_SECONDS",
    "CELERY_QUEUE",
    "CHANNELS_PREFIX",
)


class ScaleOut:
    def __init__(self, *, database_url: str, run_dir: Path, log_path: Path) -> None:
        self.port = processes.free_port()
        self.run_dir = run_dir
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in _TEST_ONLY}
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=os.environ["REDIS_URL"],
            SECRET_KEY="scale-out-test-" + uuid.uuid4().hex,
            PORT=str(self.port),
            SIMULATE_RATE="0",
            # Where supervisord keeps its socket, pid file, log and beat's schedule: this
            # test's own, so a `make run` in the same checkout is left alone.
            CALIBER_RUN_DIR=str(run_dir),
            # A queue and channel prefix of its own on the test Redis db.
            CELERY_QUEUE=f"scale-out-{uuid.uuid4().hex[:8]}",
            CHANNELS_PREFIX=f"scale-out-{uuid.uuid4().hex[:8]}",
            # The test workflows too (a deployment adds its own the same way): one holds a
            # worker long enough to be killed mid-step.
            WORKFLOW_MODULES="tests.workflows.specs_for_tests",
            # Triage's model steps go to the model pool, as with a model server configured
            # (the offline model's would run inline): only the modeler serves that queue.
            MODEL_STEPS_ALONE="true",
        )
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Its own session: Ctrl-C reaches make and everything under it, as in a terminal.
            self.proc = subprocess.Popen(
                ["make", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"make run exited {self.proc.returncode}:\n{self.log()}")
            if self.worker_pid() and self._healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"scale-out mode did not come up:\n{self.log()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def supervisord_pid(self) -> int | None:
        try:
            return int((self.run_dir / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def children(self, parent: int | None = None) -> dict[int, str]:
        """The supervisor's child processes (or `parent`'s): pid -> command line."""
        parent = parent or self.supervisord_pid()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found[int(entry.name)] = cmdline
        return found

    def worker_pids(self) -> set[int]:
        return {pid for pid, cmd in self.children().items() if " -n worker" in cmd}

    def resumer_pids(self) -> set[int]:
        return {pid for pid, cmd in self.children().items() if " -n resumer@" in cmd}

    def modeler_pids(self) -> set[int]:
        return {pid for pid, cmd in self.children().items() if " -n modeler@" in cmd}

    def worker_pid(self) -> int | None:
        return min(self.worker_pids(), default=None)

    def stop(self) -> int | None:
        """Ctrl-C, as a person stops it: SIGINT to the whole foreground process group."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f"Ctrl-C did not stop scale-out mode:\n{self.log()}") from None


# Every test here shares the test database with the processes, so each is transactional;
# they run in file order (pytest-django runs transactional tests after the others, in order).


@pytest.fixture(scope="module")
def scale_out(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScaleOut]:
    with django_db_blocker.unblock():
        database_url = _test_database_url()
    tmp = tmp_path_factory.mktemp("scale-out")
    cluster = ScaleOut(database_url=database_url, run_dir=tmp / "run", log_path=tmp / "make.log")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def wait_until(predicate: Any, timeout: float, what: str, cluster: ScaleOut) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{cluster.log()}")


@pytest.mark.django_db(transaction=True)
def test_one_approval_goes_through_over_http(scale_out: ScaleOut) -> None:
    # seed_demo (run by `make run`) made the agent, its policies and alice.
    from django.contrib.auth.models import User

    from api.actions import create_api_token
    from escalations.models import AgentProfile, Escalation
    from workflows.models import RunStatus, WorkflowRun

    # Beside the workers, one process serves only what follows a person's decision.
    resumers = [scale_out.children()[pid] for pid in scale_out.resumer_pids()]
    assert len(resumers) == 1, scale_out.children()
    assert re.search(r" -Q \S+-priority ", resumers[0]), resumers[0]
    # ... and one, the model pool, serves only the steps that call a model: the workers do
    # not take them, so this run's classify, draft and proposal went through it.
    modelers = [scale_out.children()[pid] for pid in scale_out.modeler_pids()]
    assert len(modelers) == 1, scale_out.children()
    assert re.search(r" -Q \S+-model ", modelers[0]), modelers[0]
    workers = [scale_out.children()[pid] for pid in scale_out.worker_pids()]
    assert not any("-model" in cmd for cmd in workers), workers

    agent = AgentProfile.objects.get(name="triage-agent")
    _, agent_raw = create_api_token(agent=agent, name="scale-out test")
    console = AgentProfile.objects.create(name="review-console", team=agent.team)
    alice = User.objects.get(username="alice")
    _, reviewer_raw = create_api_token(agent=console, reviewer=True, user=alice)

    with (
        httpx.Client(base_url=scale_out.url + "/api/v1", timeout=20) as http,
    ):
        started = http.post(
            "/runs",
            json={"workflow": "support_triage", "input": TICKET, "idempotency_key": "so-1"},
            headers={"Authorization": f"Bearer {agent_raw}"},
        )
        assert started.status_code == 201, started.text
        run_id = started.json()["id"]

        def settled() -> WorkflowRun | None:
            run = WorkflowRun.objects.get(pk=run_id)
            return run if run.is_terminal else None

        approved = 0
        deadline = time.monotonic() + 120
        while settled() is None:
            assert time.monotonic() < deadline, f"the run did not finish:\n{scale_out.log()}"
            for escalation in Escalation.objects.filter(action__run_id=run_id, status="open"):
                r = http.post(
                    f"/escalations/{escalation.pk}/decision",
                    json={"verdict": "approve"},
                    headers={"Authorization": f"Bearer {reviewer_raw}"},
                )
                assert r.status_code == 201, r.text
                approved += 1
            time.sleep(0.3)
    run = settled()
    assert run is not None
    assert approved >= 1, "the demo policies send a customer reply to review"
    assert run.status == RunStatus.SUCCEEDED, (run.status, run.error)
    assert run.actions.filter(action_type="send_reply", status="executed").exists()
    assert run.steps.get(name="classify").status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_killed_workers_run_is_taken_over_within_15_seconds(scale_out: ScaleOut) -> None:
    """With the shipped settings (RUN_LEASE_SECONDS, beat's take-over every 2 s): the worker
    running a step is SIGKILLed with its pool child, and the other worker takes the run over
    — not the step's two-minute timeout, not the minute-long reconciler."""
    from django.utils import timezone

    from api.actions import create_api_token
    from escalations.models import AgentProfile, Team
    from workflows.models import RunStatus, StepRun, StepStatus, TraceEvent, WorkflowRun

    # The previous test's flush took seed_demo's rows with it.
    team, _ = Team.objects.get_or_create(slug="support", defaults={"name": "Support"})
    agent, _ = AgentProfile.objects.get_or_create(name="triage-agent", defaults={"team": team})
    _, raw = create_api_token(agent=agent, name="kill")
    with httpx.Client(base_url=scale_out.url + "/api/v1", timeout=20) as http:
        started = http.post(
            "/runs",
            json={"workflow": "long_step", "input": {"hold": 100}, "idempotency_key": "kill-1"},
            headers={"Authorization": f"Bearer {raw}"},
        )
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    step = wait_until(
        lambda: (
            StepRun.objects.filter(run_id=run_id, status=StepStatus.RUNNING)
            .exclude(lease_owner="")
            .first()
        ),
        60,
        "the long step to be running",
        scale_out,
    )
    child = int(step.lease_owner.split(":")[1])
    worker = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert worker in scale_out.worker_pids()
    # Let the heartbeat renew the lease once, so the kill is of a step well under way.
    claimed = step.lease_expires_at
    wait_until(
        lambda: StepRun.objects.get(pk=step.pk).lease_expires_at > claimed,
        30,
        "the heartbeat to renew the step's lease",
        scale_out,
    )
    for pid in (worker, child):
        os.kill(pid, signal.SIGKILL)
    killed_at = timezone.now()
    lost = wait_until(
        lambda: (
            TraceEvent.objects.filter(run_id=run_id, message__contains="lost its worker")
            .order_by("created_at")
            .first()
        ),
        60,
        "the run to be taken over",
        scale_out,
    )
    taken_over_after = (lost.created_at - killed_at).total_seconds()
    print(f"taken over {taken_over_after:.1f} s after the kill")
    assert taken_over_after < 15, f"taken over {taken_over_after:.1f} s after the kill"
    wait_until(
        lambda: WorkflowRun.objects.get(pk=run_id).status == RunStatus.SUCCEEDED,
        60,
        "the run to finish on the other worker",
        scale_out,
    )
    assert StepRun.objects.get(pk=step.pk).attempts == 2
    # supervisord starts the killed worker again (the next test counts on two).
    wait_until(
        lambda: len(scale_out.worker_pids()) == 2 and worker not in scale_out.worker_pids(),
        60,
        "supervisord to start the killed worker again",
        scale_out,
    )


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_dies_is_started_again(scale_out: ScaleOut) -> None:
    before = scale_out.worker_pids()
    assert len(before) == 2, "two worker processes: one takes over while the other restarts"
    doomed = min(before)
    os.kill(doomed, signal.SIGKILL)
    replacement = wait_until(
        lambda: (new := scale_out.worker_pids() - before) and len(new) == 1 and new.pop(),
        60,
        "supervisord to start a new worker",
        scale_out,
    )
    assert doomed not in scale_out.worker_pids()
    supervisor_log = (scale_out.run_dir / "supervisord.log").read_text()
    assert re.search(r"exited: worker-\d \(terminated by SIGKILL", supervisor_log)

    # A pool child killed while the new worker's pool starts: the worker may go down with
    # WorkerLostError, but not for good — two workers, each with its pool, are back.
    child = wait_until(
        lambda: next(iter(scale_out.children(replacement)), None),
        60,
        "the new worker's first pool child",
        scale_out,
    )
    os.kill(child, signal.SIGKILL)

    def full_pools() -> bool:
        workers = scale_out.worker_pids()
        pools = [scale_out.children(w) for w in workers]
        return len(workers) == 2 and all(pools) and all(child not in p for p in pools)

    wait_until(full_pools, 90, "two workers with their pools again", scale_out)


@pytest.mark.django_db(transaction=True)
def test_ctrl_c_stops_every_process(scale_out: ScaleOut) -> None:
    supervisord = scale_out.supervisord_pid()
    children = list(scale_out.children())
    assert scale_out.stop() is not None
    for pid in [supervisord, *children]:
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} still running"
    assert not processes.listening(scale_out.port)


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True
