"""Headless Chromium (Debian's package) driven by Playwright, for the viewer's browser tests."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    for path in CANDIDATES:
        if Path(path).is_file():
            return path
    return shutil.which("chromium")


def unavailable_reason() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if find_chromium() is None:
        return "no chromium executable (apt-get install -y chromium; .ci/run does this)"
    return None


@contextmanager
def browser_page(width: int = 1300, height: int = 900):
    """A fresh page in a fresh profile; yields (page, events) with console / failure logs."""
    from playwright.sync_api import sync_playwright

    events = {"console": [], "errors": [], "failed": [], "requests": []}
    with tempfile.TemporaryDirectory(prefix="rrm-chromium-") as profile, \
            sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=find_chromium(), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": width, "height": height})
        try:
            page = context.new_page()
            page.on("console", lambda m: events["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: events["errors"].append(str(e)))
            page.on("requestfailed", lambda r: events["failed"].append(r.url))
            page.on("request", lambda r: events["requests"].append(r.url))
            yield page, events
        finally:
            context.close()


def open_viewer(page, path: Path) -> None:
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
