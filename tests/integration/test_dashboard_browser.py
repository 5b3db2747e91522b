"""The dashboard in a real browser (Debian's chromium, Playwright), as an operator uses it:
an app under load, the page open and never reloaded while replicas die and requests fail.

The tests of this module run in order on one page.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors import serve
from tests.browser import NO_CHROMIUM, chromium, find_chromium
from tests.cluster import LocalCluster, poll
from tests.integration.test_dashboard import Front, Model

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

ROOT = Path(__file__).resolve().parents[2]
#: Set to 1 to write the screenshot kept for the README (docs/dashboard.png).
UPDATE_SCREENSHOT = os.environ.get("MQSERVE_UPDATE_SCREENSHOT") == "1"


@pytest.fixture(scope="module")
def base(serve_instance) -> Iterator[str]:  # type: ignore[no-untyped-def]
    serve.run(Front.bind(Model.bind()), name="web", route_prefix="/web")
    yield f"http://127.0.0.1:{os.environ['MQSERVE_HTTP_PORT']}"
    serve.delete("web")


@pytest.fixture(scope="module")
def load(base: str) -> Iterator[None]:
    """Requests to the app, one after another from a thread, while the module's tests run."""
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    client.get(f"{base}/web?x=ok")
                except httpx.HTTPError:
                    pass
                stop.wait(0.02)

    thread = threading.Thread(target=run, name="load", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def page(base: str, load: None) -> Iterator[Any]:
    assert CHROMIUM is not None
    with chromium(CHROMIUM) as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        try:
            tab = context.new_page()
            tab.goto(f"{base}/-/dashboard")
            tab.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
            yield tab
        finally:
            context.close()


def text(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.inner_text(timeout=5000)).strip()


def updates(page: Any) -> int:
    return int(page.evaluate("Number(document.body.dataset.updates || 0)"))


def test_the_page_loads_in_under_a_second_and_shows_the_app(page: Any) -> None:
    # Given the page, opened against a running app under load
    page.wait_for_selector('[data-app="web"] [data-deployment="Model"]', timeout=10000)
    # Then it loaded in under a second (the browser's navigation timing), first data included
    nav = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
    first = page.evaluate("performance.getEntriesByName('mqserve-first-render')[0].startTime")
    print(f"dashboard load: loadEventEnd {nav['loadEventEnd']:.0f} ms, first render {first:.0f} ms")
    assert 0 < nav["loadEventEnd"] < 1000
    assert first < 1000
    # And it shows the app, its deployments and their replica counts
    assert "RUNNING" in text(page, '[data-app="web"] h2')
    assert "ingress Front" in text(page, '[data-app="web"] h2')
    for name, replicas in (("Front", 1), ("Model", 2)):
        row = f'[data-app="web"] [data-deployment="{name}"]'
        poll(lambda row=row, replicas=replicas: text(page, f'{row} [data-field="running"]') == str(replicas),
             timeout_s=10, what=f"{name} running")
        assert text(page, f'{row} [data-field="target"]') == str(replicas)
        assert page.locator(f'[data-replicas-of="{name}"] [data-state="RUNNING"]').count() == replicas
    assert page.locator("#workers [data-member]").count() >= 1
    assert page.locator("#gateways [data-member]").count() >= 1
    assert text(page, "#controller") not in ("", "none", "–")


def test_the_request_counter_rises_without_reloading(page: Any) -> None:
    counter = '[data-app="web"] [data-deployment="Model"] [data-field="requests_total"]'
    first, seen = int(text(page, counter)), updates(page)
    poll(lambda: updates(page) > seen and int(text(page, counter)) > first, timeout_s=10,
         what="the counter to rise")
    assert page.evaluate("window.__sameDocument === true")


def test_a_killed_replica_leaves_and_comes_back(page: Any, cluster: LocalCluster) -> None:
    # Given Model's two running replicas, When one is killed (SIGKILL)
    records = cluster.registry.replicas("web", "Model")
    victim, record = sorted(records.items())[0]
    chip = f'[data-replicas-of="Model"] [data-replica="{victim}"]'
    assert page.locator(chip).count() == 1
    os.kill(int(record["pid"]), signal.SIGKILL)
    # Then the page shows it gone, and a replacement running: two again, under other ids
    poll(lambda: page.locator(chip).count() == 0, timeout_s=20, what="the killed replica to leave the page")

    def back() -> bool:
        running = page.locator('[data-replicas-of="Model"] [data-state="RUNNING"]')
        return running.count() == 2 and text(page, '[data-deployment="Model"] [data-field="running"]') == "2"

    poll(back, timeout_s=30, what="a replacement replica on the page")
    assert page.locator(chip).count() == 0
    assert page.evaluate("window.__sameDocument === true")


def test_a_failing_request_appears_under_recent_errors(page: Any, base: str, tmp_path: Path) -> None:
    # When a request fails in Model
    assert httpx.get(f"{base}/web?x=fail", timeout=10).status_code == 500
    # Then the page lists it: deployment, exception type, first line of its message (in
    # Model, and in Front, which awaited it and raised it again)
    rows = page.locator('#recent-errors [data-error="ValueError"]')
    poll(lambda: rows.filter(has_text="web / Model").count() >= 1, timeout_s=10, what="the failure on the page")
    assert "dashboard test failure" in str(rows.filter(has_text="web / Model").first.inner_text())
    poll(lambda: rows.filter(has_text="web / Front").count() >= 1, timeout_s=10, what="the ingress's failure")
    assert page.evaluate("window.__sameDocument === true")
    # A screenshot of the page as it is now (and, on request, the README's)
    poll(lambda: updates(page) > 0 and page.locator('[data-replicas-of="Model"] [data-state="RUNNING"]').count() == 2,
         timeout_s=30, what="a steady page")
    shot = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert len(shot) > 10_000
    if UPDATE_SCREENSHOT:
        (ROOT / "docs" / "dashboard.png").write_bytes(shot)
