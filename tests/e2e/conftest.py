"""Browser tests: Playwright driving Debian's Chromium against a live server on loopback.

Each test's pages are saved as screenshots under test-artifacts/screenshots/<test name>/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "browser tests need Debian's chromium (make test installs it)"
    # Playwright's sync API keeps an event loop running in this thread, and Django refuses ORM
    # calls from such a thread; the tests' own calls are plain synchronous set-up and checks.
    # Allowed for these tests only: the variable must not reach later tests or subprocesses.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


class Shooter:
    """Saves a numbered screenshot of the page at each step of a journey."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: str) -> None:
        self.count += 1
        self.page.screenshot(path=self.folder / f"{self.count:02d}-{step}.png", full_page=True)


@pytest.fixture(autouse=True)
def _static_files_by_plain_name(settings) -> None:
    """The live server answers /static/ itself, from the source folders, where the hashed
    names of the manifest storage do not exist; pages must link the plain names or they
    would be shown without their style sheet and script."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.fixture
def shoot(page: Page, request: pytest.FixtureRequest) -> Shooter:
    return Shooter(page, SCREENSHOTS / re.sub(r"[^\w.-]+", "_", request.node.name))
