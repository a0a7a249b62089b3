"""Shared fixtures: the people (alice and carol on Support, bob on Billing, an admin), the
demo agent and policies, and real processes — a celery worker and a daphne server — pointed
at the test database, for the tests that need the whole system."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Browser, Page, sync_playwright

from escalations.models import AgentProfile, AutonomyPolicy, Escalation, Team
from tests.support import processes
from workflows.models import PolicyOutcome, WorkflowRun

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() == "true"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [
        name
        for name, url, port in (
            ("PostgreSQL", os.environ["DATABASE_URL"], 5432),
            ("Redis", os.environ["REDIS_URL"], 6379),
        )
        if not _reachable(url, port)
    ]
    if missing:
        # Never a skip: a suite that silently tests less is worse than one that fails.
        pytest.exit(
            f"{' and '.join(missing)} not reachable (DATABASE_URL={os.environ['DATABASE_URL']}, "
            f"REDIS_URL={os.environ['REDIS_URL']}); .ci/run starts them.",
            returncode=3,
        )


# --- people and configuration -------------------------------------------------------------


@pytest.fixture
def support(db: None) -> Team:
    return Team.objects.create(name="Support", slug="support")


@pytest.fixture
def billing(db: None) -> Team:
    return Team.objects.create(name="Billing", slug="billing")


def _user(username: str, team: Team | None = None, *, admin: bool = False) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username)
    if admin:
        user.is_staff = user.is_superuser = True
        user.save()
    if team is not None:
        team.members.add(user)
    return user


@pytest.fixture
def alice(support: Team) -> User:
    """A reviewer on Support."""
    return _user("alice", support)


@pytest.fixture
def carol(support: Team) -> User:
    """Alice's teammate."""
    return _user("carol", support)


@pytest.fixture
def bob(billing: Team) -> User:
    """A reviewer on Billing: an outsider to Support's escalations."""
    return _user("bob", billing)


@pytest.fixture
def admin_user(db: None) -> User:
    return _user("root", admin=True)


@pytest.fixture
def agent(support: Team) -> AgentProfile:
    return AgentProfile.objects.create(name="triage-agent", team=support, customer_facing=True)


@pytest.fixture
def policies(agent: AgentProfile, support: Team) -> list[AutonomyPolicy]:
    """The demo's policies: CRM updates and routing act alone when confident, replies reviewed."""
    return [
        AutonomyPolicy.objects.create(
            name="crm", action_type="update_crm", outcome=PolicyOutcome.AUTO, min_confidence=0.7
        ),
        AutonomyPolicy.objects.create(
            name="replies",
            action_type="send_reply",
            outcome=PolicyOutcome.AUTO,
            min_confidence=0.85,
            irreversible_requires_review=True,
            team=support,
        ),
        AutonomyPolicy.objects.create(
            name="routing",
            action_type="route_to_team",
            outcome=PolicyOutcome.AUTO,
            min_confidence=0.5,
        ),
    ]


TICKET = {
    "ticket_id": "T-000001",
    "subject": "Charged twice for my subscription",
    "body": "I was charged twice this month. Please fix the billing.",
    "customer": "ada.1@example.com",
}


@pytest.fixture
def ticket() -> dict[str, str]:
    return dict(TICKET)


# --- waiting -----------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def wait_for_run(run: WorkflowRun, *statuses: str, timeout: float = 20.0) -> WorkflowRun:
    def check() -> WorkflowRun | None:
        run.refresh_from_db()
        return run if run.status in statuses else None

    try:
        return wait_for(check, timeout)
    except AssertionError:
        raise AssertionError(
            f"run stayed {run.status} (wanted {statuses}); trace: "
            + " | ".join(run.trace.values_list("message", flat=True))
        ) from None


# --- real processes against the test database ---------------------------------------------


def _test_database_url() -> str:
    from django.db import connection

    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


def _service_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=_test_database_url(),
        CELERY_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        CHANNELS_PREFIX=os.environ["CHANNELS_PREFIX"],
        PYTHONUNBUFFERED="1",
        CELERY_LOG_LEVEL="INFO",
    )
    return env


_free_port = processes.free_port
_stop = processes.stop


def _purge_queue() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        for queue in (
            settings.CELERY_TASK_DEFAULT_QUEUE,
            settings.CELERY_PRIORITY_QUEUE,
            settings.CELERY_MODEL_QUEUE,
        ):
            conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]


# Set once the session's celery worker runs: from then on it consumes every later test's
# sends too.
_worker_running = [False]


@pytest.fixture(autouse=True)
def _no_drain_pending(request: pytest.FixtureRequest, django_db_blocker: Any) -> Iterator[None]:
    """Every test starts with no drain wake-up pending: one a test sent to its own inline
    task list (and never ran) must not silence the next test's wake-ups (outbox.wake_drain).

    After a transactional test, once the session's worker runs: let a drain the test woke
    finish before the database is flushed. It claims every ready run, a test's scaffolding
    too, and a TRUNCATE racing its transaction can deadlock the teardown."""
    from escalations.actions.summaries import WRITE_SUMMARIES
    from workflows import outbox

    with contextlib.suppress(Exception):
        outbox.drain_woken(outbox.DRAIN)
        outbox.drain_woken(outbox.DRAIN_RESUMES)
        outbox.drain_woken(WRITE_SUMMARIES)
    yield
    marker = request.node.get_closest_marker("django_db")
    transactional = marker is not None and marker.kwargs.get("transaction", False)
    if not (_worker_running[0] and transactional):
        return
    from workflows.models import StepRun, StepStatus, WorkflowRun

    deadline = time.monotonic() + 10
    quiet = 0
    with django_db_blocker.unblock(), contextlib.suppress(Exception):
        client = outbox._broker_client()
        while quiet < 3 and time.monotonic() < deadline:
            busy = (
                (
                    client is not None
                    and client.exists(
                        outbox._drain_flag(outbox.DRAIN),
                        outbox._drain_flag(outbox.DRAIN_RESUMES),
                        outbox._drain_flag(WRITE_SUMMARIES),
                    )
                )
                or WorkflowRun.objects.exclude(lease_owner="").exists()
                # A summary writer at work (its claims are leases into the future).
                or Escalation.objects.filter(summary_wanted_at__gt=timezone.now()).exists()
                or StepRun.objects.filter(status=StepStatus.RUNNING).exists()
            )
            quiet = 0 if busy else quiet + 1
            time.sleep(0.05)


@pytest.fixture(scope="session")
def worker_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("processes")


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: Any, worker_log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process (prefork, 2 children) on Redis and the test database."""
    with django_db_blocker.unblock():
        env = _service_env()
    with contextlib.suppress(Exception):
        _purge_queue()
    proc = processes.start_worker(env=env, log_path=worker_log_dir / "worker.log")
    _worker_running[0] = True
    yield proc
    _stop(proc)


@pytest.fixture(scope="session")
def live_server_url(
    django_db_setup: None, django_db_blocker: Any, worker_log_dir: Path
) -> Iterator[str]:
    """Daphne serving the real ASGI app (HTTP and websockets) on the test database.

    With the web pool, as in production. The chaos cases terminate every backend of the
    test database, this server's idle pooled connections included: the pool replaces all
    of them once it finds one dead (config.asgi.check_or_drain), so the tests after them
    are not answered 503 ("couldn't get a connection after 3.00 sec")."""
    with django_db_blocker.unblock():
        env = _service_env()
    port = _free_port()
    proc = processes.start_daphne(env=env, log_path=worker_log_dir / "daphne.log", port=port)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture
def restartable_server(
    django_db_setup: None, django_db_blocker: Any, worker_log_dir: Path
) -> Iterator[dict[str, Any]]:
    """A daphne of this test's own, which the test may stop and start again on the same port."""
    with django_db_blocker.unblock():
        env = _service_env()
    port = _free_port()
    server: dict[str, Any] = {"url": f"http://127.0.0.1:{port}"}

    def start() -> None:
        server["proc"] = processes.start_daphne(
            env=env, log_path=worker_log_dir / "daphne-restartable.log", port=port, append=True
        )

    server["start"] = start
    server["stop"] = lambda: _stop(server["proc"])
    start()
    yield server
    _stop(server["proc"])


# --- the browser ---------------------------------------------------------------------------

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}; `make test` installs Debian's chromium")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are ordinary blocking calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live_server_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server_url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    yield page
    context.close()


def login(page: Page, username: str) -> None:
    page.goto("/login/?next=/review/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-" + username)
    page.click("button[type=submit]")
    page.wait_for_url("**/review/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API keeps an event loop running in the main
    thread for the session, and async_to_sync refuses to run under a running loop."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
