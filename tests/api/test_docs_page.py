"""The API docs page renders in a real browser, offline, under the app's CSP."""

import threading

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ARTIFACTS, CHROMIUM


def _visit_docs(base_url: str, seen: dict) -> None:
    try:
        _visit(base_url, seen)
    except Exception as exc:
        seen["error"] = repr(exc)


def _visit(base_url: str, seen: dict) -> None:
    problems: list[str] = []
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        page = browser.new_page(base_url=base_url, viewport={"width": 1280, "height": 860})
        page.on(
            "console",
            lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None,
        )
        page.on(
            "request",
            lambda req: (
                outside.append(req.url) if not req.url.startswith((base_url, "data:")) else None
            ),
        )
        page.goto("/api/v1/docs")
        page.wait_for_selector("text=Caliber agent API")
        page.click("text=Submit an action for approval")
        page.wait_for_selector("text=idempotency_key")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "api-docs.png"))
        browser.close()
    seen.update(problems=problems, outside=outside, done=True)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_docs_page_renders_under_the_csp_with_nothing_from_outside(live_server_url):
    seen: dict = {}
    # A browser of its own, on a thread of its own: the shared `browser` fixture would leave
    # Playwright's event loop on the main thread for every later (async_to_sync) test.
    visit = threading.Thread(target=_visit_docs, args=(live_server_url, seen))
    visit.start()
    visit.join(120)
    assert seen.get("done"), seen.get("error", "the docs page did not render in time")
    assert seen["outside"] == []
    assert not [p for p in seen["problems"] if "Content Security Policy" in p], seen["problems"]
