"""The API docs page renders in a real browser, offline, under the app's CSP."""

import pytest

from tests.conftest import ARTIFACTS


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_docs_page_renders_under_the_csp_with_nothing_from_outside(page, live_server_url):
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None,
    )
    outside: list[str] = []
    page.on(
        "request",
        lambda req: (
            outside.append(req.url) if not req.url.startswith((live_server_url, "data:")) else None
        ),
    )
    page.goto("/api/v1/docs")
    page.wait_for_selector("text=Caliber agent API")
    page.wait_for_selector("text=Submit an action for approval")
    page.click("text=Submit an action for approval")
    page.wait_for_selector("text=idempotency_key")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)
    assert outside == []
    assert not [p for p in problems if "Content Security Policy" in p], problems
