"""Fixtures for the console's browser tests: Debian's chromium driven by Playwright, one browser for all.

Browsers cannot be downloaded here, so Playwright launches ``/usr/bin/chromium`` (``apt-get install
chromium``; ``.ci/run`` installs it). Without it the browser tests skip locally and fail under ``CI=true``. A
failing browser test leaves a screenshot of its page in ``test-artifacts/console/`` (or
``$SLUICEGATE_SCREENSHOT_DIR``).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("SLUICEGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SLUICEGATE_SCREENSHOT_DIR", ROOT / "test-artifacts" / "console"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the test item, so the page fixture knows the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium for the module (the browser tests are one module).

    Not for the session: Playwright's sync API leaves its event loop marked as running in this thread while it
    is open, and every later test that starts an event loop (pytest-asyncio, ``asyncio.run``) would fail.
    """
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
    assert asyncio.events._get_running_loop() is None, "Playwright's loop is still marked running"


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page per test, laptop-sized; a screenshot is saved on
    failure."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:120]
            for index, each in enumerate(context.pages):
                try:
                    each.screenshot(path=str(ARTIFACTS / f"{name}-{index}.png"), full_page=True)
                except Exception as exc:  # a crashed page must not hide the test's own failure
                    print(f"screenshot of {name} failed: {exc}")
        context.close()
