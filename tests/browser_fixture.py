"""Debian's chromium driven by Playwright, for the web console's tests.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``
(Debian's package, which ``make test``'s bootstrap installs). One browser per
test module; each test opens its own context (its own localStorage) through
:func:`watched_page`, which records what a test must be able to assert on:
console errors, uncaught page errors, CSP violations and every URL requested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"

# Runs in every document before its own scripts (CDP, so the page's CSP does not apply to it).
_RECORD_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run 'make test' (its bootstrap installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class WatchedPage:
    context: Any
    page: Any
    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, url of its source)
    page_errors: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, url)
    urls: list[str] = field(default_factory=list)  # every page.url seen (navigations, hash changes)

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("window.__cspViolations || []"))

    def close(self) -> None:
        self.context.close()


def watched_page(browser: Any, *, width: int = 1280, height: int = 800) -> WatchedPage:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(15_000)
    context.add_init_script(_RECORD_CSP)
    page = context.new_page()
    w = WatchedPage(context, page)
    page.on("console", lambda msg: msg.type == "error" and w.console_errors.append(
        (msg.text, (msg.location or {}).get("url", ""))))
    page.on("pageerror", lambda exc: w.page_errors.append(str(exc)))
    page.on("request", lambda req: w.requests.append((req.method, req.url)))
    page.on("framenavigated", lambda frame: frame == page.main_frame and w.urls.append(frame.url))
    return w
