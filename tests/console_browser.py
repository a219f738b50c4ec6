"""Helpers for the console tests: Debian's chromium under Playwright, sign-in and screenshots."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

logger = logging.getLogger(__name__)

# Playwright's own browser download cannot run here; the tests drive Debian's package.
CHROMIUM = Path("/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Deploys of the demo models on two CPU cores take well under this; it only bounds a hang.
JOB_TIMEOUT_MS = 240_000


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise AssertionError(f"{CHROMIUM} is missing; install it with `apt-get install -y chromium` "
                             "(`make test` does this).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Browser, base_url: str) -> BrowserContext:
    context = browser.new_context(base_url=base_url, viewport=DESKTOP)  # type: ignore[arg-type]
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    return context


def sign_in(page: Page, username: str, password: str) -> None:
    """Fill in the sign-in form the page shows and wait to leave it."""
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/sign-in" not in url)


def screenshot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    logger.info("screenshot %s", path)
    return path


def confirm_dialog(page: Page) -> None:
    """Accept the console's confirmation dialog."""
    dialog = page.locator("#confirm-dialog")
    dialog.get_by_role("button", name="Confirm").click()


def copy_demo_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
