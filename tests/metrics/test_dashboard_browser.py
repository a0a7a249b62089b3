"""The dashboard in headless Chromium: the charts are drawn and visible."""

import pytest
from playwright.sync_api import expect

from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_the_dashboard_shows_its_charts(
    browser, live_server_url, admin_user, propose, decide, policies
):
    for i in range(6):
        decide(
            propose("send_reply", 0.95 if i % 2 else 0.55),
            "approve" if i < 4 else "reject",
            reason="" if i < 4 else "tone",
        )
    propose("update_crm", 0.9)
    context = browser.new_context(base_url=live_server_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto("/login/?next=/review/")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", "pw-root")
    page.click("button[type=submit]")
    page.wait_for_url("**/review/")
    page.goto("/metrics/?period=7")
    expect(page.locator("h1")).to_have_text("Metrics")
    charts = page.locator("svg.chart")
    expect(charts.first).to_be_visible()
    assert charts.count() >= 3  # two trend charts and a calibration chart
    assert page.locator("svg.chart polyline.series, svg.chart circle.series-dot").count() >= 1
    calibration = page.locator("svg.calibration")
    expect(calibration).to_be_visible()
    assert calibration.locator("rect.bar").count() == 2
    box = calibration.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 80
    expect(page.locator("#m-override")).to_have_text("33%")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "metrics.png"), full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e], errors
    context.close()
