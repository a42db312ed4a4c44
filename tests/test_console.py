"""The operator console in a real browser, against a real controller and a real device agent.

Debian's chromium (Playwright) signs in with the admin token, opens the
device from the fleet view, creates a blank volume through the form, watches
the device report it CREATED_VOLUME, purges it, reads its history and
charts, deletes it, and meets form errors next to their fields: on SQLite
and on PostgreSQL. Every page is checked for console errors and CSP
violations, and no URL ever carries the token. The rest: phone width, the
security headers (and no CORS), and the console without uPlot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from edgevol.controller.web import CSP
from tests.browser_fixture import WatchedPage, browser, watched_page  # noqa: F401
from tests.controller_fixture import agent_factory, controller_factory, onboard  # noqa: F401
from tests.pg_fixture import db_url, pg_cluster  # noqa: F401

DEVICE_WAIT = 60_000  # ms: what the device must do (onboard, create a volume) may take this long
# What the browser itself logs for an API answer the test provokes on purpose (a wrong token, a
# duplicate name); any other console error fails the test.
EXPECTED_HTTP_ERRORS = [(401, "/api/v1/fleet"), (409, "/api/v1/devices/dev1/volumes")]


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Admin token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def field_error(scope: Any, label: str) -> Any:
    """The error shown next to the control labelled ``label``."""
    page = getattr(scope, "page", scope)  # inner locators of `has` are relative to each candidate
    return scope.locator(".field", has=page.get_by_label(label, exact=True)).locator(".field-error")


def volume_row(page: Any, name: str, generation: int | None = None) -> Any:
    sel = f'#volumes tr[data-volume="{name}"]'
    if generation is not None:
        sel += f'[data-generation="{generation}"]'
    return page.locator(sel)


def posts(w: WatchedPage, path_end: str) -> int:
    return sum(1 for method, url in w.requests if method == "POST" and url.endswith(path_end))


def assert_clean(w: WatchedPage, token: str, allowed: Sequence[tuple[int, str]] = ()) -> None:
    """No console or page errors (but the HTTP refusals the test provoked), no CSP violation, and the
    token in no URL the page requested or showed."""
    unexpected = []
    for text, url in w.console_errors:
        m = re.fullmatch(r"Failed to load resource: the server responded with a status of (\d+) .*", text)
        if m and any(int(m.group(1)) == status and url.endswith(path) for status, path in allowed):
            continue
        unexpected.append((text, url))
    assert unexpected == [], f"console errors: {unexpected}"
    assert w.page_errors == [], f"page errors: {w.page_errors}"
    assert w.csp_violations() == []
    seen = [url for _, url in w.requests] + w.urls + [w.page.url]
    assert seen and not [u for u in seen if token in u], "the admin token appeared in a URL"


@pytest.mark.timeout(240)
def test_console_drives_a_device(db_url, controller_factory, agent_factory, browser):  # noqa: F811
    ctrl = controller_factory(db_url)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    agent.start()
    token = ctrl.token
    w = watched_page(browser)
    page = w.page
    try:
        # 1. sign in: a wrong token is refused next to the field, the right one opens the fleet
        page.goto(ctrl.url + "/")
        page.get_by_label("Admin token", exact=True).fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(field_error(page, "Admin token")).to_have_text("The controller refused this token.")
        expect(page.get_by_label("Admin token", exact=True)).to_be_focused()
        page.get_by_label("Admin token", exact=True).fill(token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Fleet", exact=True)).to_be_visible()

        # 2. the fleet row: registered once the agent onboarded; its name opens the device
        fleet_row = page.locator('tr[data-device="dev1"]')
        expect(fleet_row.locator("td.c-registered")).to_have_text("yes", timeout=DEVICE_WAIT)
        expect(fleet_row.locator("td.c-seen")).to_have_text(re.compile(r"\d+ s ago"))
        expect(fleet_row.locator("td.c-errors")).to_have_text("0")
        fleet_row.get_by_role("link", name="dev1").click()
        expect(page).to_have_url(re.compile(r"#/devices/dev1$"))
        expect(page.get_by_role("heading", name="Device dev1")).to_be_visible()

        # 3. a blank volume through the form, until the device reports it created
        page.get_by_role("button", name="New volume").click()
        form = page.get_by_role("form", name="New volume")
        expect(form.get_by_label("Name", exact=True)).to_be_focused()
        form.get_by_label("Name", exact=True).fill("scratch")
        expect(form.get_by_label("Origin", exact=True)).to_have_value("")  # Blank
        form.get_by_label("Size", exact=True).fill("64 MiB")
        form.get_by_role("button", name="Create").click()
        expect(form).to_have_count(0)
        gen0 = volume_row(page, "scratch", 0)
        expect(gen0.locator("td.c-state")).to_have_text("CREATED_VOLUME", timeout=DEVICE_WAIT)
        expect(gen0.locator("td.c-size")).to_have_text("64 MiB")
        expect(gen0.locator("td.c-progress")).to_contain_text("100%")

        # 7. form errors next to their fields: a size that does not parse (no request sent),
        # then the API's 409 for a name already taken
        page.get_by_role("button", name="New volume").click()
        form = page.get_by_role("form", name="New volume")
        form.get_by_label("Name", exact=True).fill("other")
        form.get_by_label("Size", exact=True).fill("lots")
        before = posts(w, "/volumes")
        form.get_by_role("button", name="Create").click()
        expect(field_error(form, "Size")).to_contain_text('"lots" is not a size')
        expect(form.get_by_label("Size", exact=True)).to_be_focused()
        assert posts(w, "/volumes") == before, "a size that does not parse reached the API"
        form.get_by_label("Name", exact=True).fill("scratch")
        form.get_by_label("Size", exact=True).fill("1.5GiB")
        form.get_by_role("button", name="Create").click()
        expect(field_error(form, "Name")).to_have_text("a volume named 'scratch' already exists on this device")
        expect(field_error(form, "Size")).to_be_hidden()
        assert posts(w, "/volumes") == before + 1
        # the form, its text and its focus survive the refreshes (once a second) around it
        form.get_by_label("Name", exact=True).fill("keep-me")
        page.wait_for_function("() => document.querySelector('.live').textContent.includes('updated')")
        first = page.locator(".live").text_content()
        expect(page.locator(".live")).not_to_have_text(first or "")  # at least one refresh later
        expect(form.get_by_label("Name", exact=True)).to_have_value("keep-me")
        expect(form.get_by_label("Name", exact=True)).to_be_focused()
        form.get_by_role("button", name="Cancel").click()
        expect(form).to_have_count(0)
        expect(page.get_by_role("button", name="New volume")).to_be_focused()

        # 4. purge behind a confirm dialog (Escape cancels), until generation 1 is created
        gen0.get_by_role("button", name="Purge").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading")).to_have_text("Purge volume scratch?")
        expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)
        assert posts(w, "/purge") == 0
        gen0.get_by_role("button", name="Purge").click()
        page.get_by_role("dialog").get_by_role("button", name="Purge").click()
        gen1 = volume_row(page, "scratch", 1)
        expect(gen1.locator("td.c-state")).to_have_text("CREATED_VOLUME", timeout=DEVICE_WAIT)
        expect(gen0).to_have_count(0, timeout=DEVICE_WAIT)  # the old generation deleted and reported gone

        # 5. the volume's page: both generations' history, ending in CREATED_VOLUME, and a chart
        gen1.get_by_role("link", name="scratch").click()
        expect(page).to_have_url(re.compile(r"#/devices/dev1/volumes/scratch$"))
        expect(page.get_by_role("heading", name="Volume scratch")).to_be_visible()
        for gen in (0, 1):
            states = page.locator(f'section.generation[data-generation="{gen}"] li .state')
            expect(states.last).to_have_text("CREATED_VOLUME", timeout=DEVICE_WAIT)
        expect(page.locator('section.generation[data-generation="1"] h3')).to_contain_text("current")
        expect(page.locator(".uplot canvas").first).to_be_visible(timeout=DEVICE_WAIT)
        expect(page.locator(".chart").first).to_contain_text("Used")

        # 6. delete it from the device page (confirm), until the device reports it gone
        page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="dev1").click()
        gen1 = volume_row(page, "scratch", 1)
        gen1.get_by_role("button", name="Delete").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Delete volume scratch?")
        dialog.get_by_role("button", name="Delete").click()
        expect(volume_row(page, "scratch")).to_have_count(0, timeout=DEVICE_WAIT)
        expect(page.locator("#volumes .empty")).to_be_visible()

        # the session lives in localStorage across a reload, until "Sign out"
        page.reload()
        expect(page.get_by_role("heading", name="Device dev1")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("Admin token", exact=True)).to_be_visible()
        assert page.evaluate("Object.keys(localStorage)") == []
        assert page.context.cookies() == []

        # 8. nothing went wrong in the page, and the token stayed out of every URL
        assert_clean(w, token, EXPECTED_HTTP_ERRORS)
        assert any(re.search(r"/history\?kind=volume&key=[0-9a-f-]{36}$", url) for _, url in w.requests)
        assert any(re.search(r"/volumes/[0-9a-f-]{36}/metrics\?limit=", url) for _, url in w.requests)
        # every admin path the page called is one the API documents (the console is built only on it)
        documented = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$")
                      for p in httpx.get(ctrl.url + "/openapi.json", timeout=10).json()["paths"]]
        called = {urlsplit(url).path for _, url in w.requests if urlsplit(url).path.startswith("/api/")}
        assert {"/api/v1/fleet", "/api/v1/devices/dev1/reported"} <= called
        assert [p for p in called if not any(d.match(p) for d in documented)] == []
    finally:
        w.close()


def test_console_headers_phone_width_and_pending(controller_factory, browser):  # noqa: F811
    """Security headers and no CORS; static files' types; a 390 px wide phone can create a volume, which
    shows as pending while no device runs."""
    ctrl = controller_factory(None)
    ctrl.admin("POST", "/devices", json={"name": "phone-dev", "serial": "SN-P"})
    token = ctrl.token

    page_resp = httpx.get(ctrl.url + "/", timeout=10)
    assert page_resp.status_code == 200 and page_resp.headers["content-type"] == "text/html; charset=utf-8"
    assert page_resp.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    assert page_resp.headers["x-content-type-options"] == "nosniff"
    assert page_resp.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page_resp.text and "style=" not in page_resp.text
    assert '<script src="/console/vendor/uPlot.iife.min.js" defer></script>' in page_resp.text
    for path, ctype in (("/console/console.js", "text/javascript"), ("/console/console.css", "text/css"),
                        ("/console/index.html", "text/html"), ("/console/vendor/uPlot.iife.min.js", "text/javascript"),
                        ("/console/vendor/uPlot.min.css", "text/css")):
        r = httpx.get(ctrl.url + path, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
        assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/console/nothing.js", "/console/vendor/uPlot.d.ts", "/console/..%2Fweb.py", "/console/web.py"):
        assert httpx.get(ctrl.url + path, timeout=10).status_code == 404, path
    # no CORS: a cross-site page's preflight for an Authorization header is not granted, nor is a read
    preflight = httpx.options(ctrl.url + "/api/v1/fleet", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization"})
    cross = httpx.get(ctrl.url + "/api/v1/fleet", timeout=10, headers={
        "Origin": "https://evil.example", "Authorization": f"Bearer {token}"})
    for r in (preflight, cross, page_resp):
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers
    assert "set-cookie" not in page_resp.headers and "set-cookie" not in cross.headers

    w = watched_page(browser, width=390, height=844)
    page = w.page
    try:
        sign_in(page, ctrl.url, token)
        expect(page.locator('tr[data-device="phone-dev"] td.c-registered')).to_have_text("no")
        expect(page.locator('tr[data-device="phone-dev"] td.c-seen')).to_have_text("never")
        expect(page.locator('tr[data-device="phone-dev"] td.c-seen')).to_have_class(re.compile(r"\bstale\b"))
        page.get_by_role("link", name="phone-dev").click()
        page.get_by_role("button", name="New volume").click()
        form = page.get_by_role("form", name="New volume")
        # every control is on screen and within the phone's width (no sideways scrolling to reach it)
        for label in ("Name", "Origin", "Size", "Read-only"):
            control = form.get_by_label(label, exact=True)
            expect(control).to_be_visible()
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (label, box)
        for name in ("Create", "Cancel"):
            box = form.get_by_role("button", name=name).bounding_box()
            assert box is not None and box["x"] + box["width"] <= 390, (name, box)
        form.get_by_label("Name", exact=True).fill("phone-vol")
        form.get_by_label("Size", exact=True).fill("1 GiB")
        form.get_by_label("Read-only", exact=True).check()
        form.get_by_label("Size", exact=True).press("Enter")  # keyboard submit
        row = volume_row(page, "phone-vol", 0)
        expect(row.locator("td.c-state")).to_have_text("pending")
        expect(row.locator("td.c-size")).to_have_text("1 GiB")
        expect(row.locator("td.c-origin")).to_have_text("blank, read-only")
        # the page itself does not scroll sideways: wide tables scroll inside their own box
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert ctrl.admin("GET", "/devices/phone-dev/volumes/phone-vol")["max_size_bytes"] == 1 << 30
        assert_clean(w, token)
    finally:
        w.close()


def test_console_size_parsing(controller_factory, browser):  # noqa: F811
    """The form's size parser: binary units, exact, as the admin CLI reads sizes; and error cells' text."""
    ctrl = controller_factory(None)
    w = watched_page(browser)
    try:
        w.page.goto(ctrl.url + "/")
        cases = ["1 GiB", "500 MiB", "1.5GiB", "4096", "1G", "64m", "2 TiB", "0.5 KiB", "lots", "1.3 B", "", "2 PiB"]
        got = w.page.evaluate("""async (cases) => {
            const { parseSize, formatBytes, errorText } = await import("/console/units.js");
            const out = {};
            for (const c of cases) { try { out[c] = parseSize(c); } catch (e) { out[c] = "error: " + e.message; } }
            out.formatted = [0, 1023, 64 * 2 ** 20, 1.5 * 2 ** 30, 2 ** 40].map(formatBytes);
            out.errors = [null, { description: "HTTP 503", retry_condition: "" },
                          { description: "HTTP 503", retry_condition: "attempt 1 of 5 failed; attempt 2 at X" }]
                .map(errorText);
            return out;
        }""", cases)
        assert got["1 GiB"] == 1 << 30 and got["500 MiB"] == 500 << 20 and got["1.5GiB"] == 3 << 29
        assert got["4096"] == 4096 and got["1G"] == 1 << 30 and got["64m"] == 64 << 20 and got["2 TiB"] == 2 << 40
        assert got["0.5 KiB"] == 512
        assert got["lots"].startswith('error: "lots" is not a size')
        assert got["1.3 B"] == 'error: "1.3 B" is not a whole number of bytes'
        assert got[""].startswith("error:") and got["2 PiB"] == 'error: "2 PiB" is larger than 1 PiB'
        assert got["formatted"] == ["0 B", "1023 B", "64 MiB", "1.5 GiB", "1 TiB"]
        # a reported error cell: what failed, then when the device tries again
        assert got["errors"] == ["", "HTTP 503", "HTTP 503 · retry: attempt 1 of 5 failed; attempt 2 at X"]
        assert_clean(w, ctrl.token)
        # the CSP holds, and the watch on it works: an inline style attribute is refused and recorded
        w.page.evaluate("document.body.setAttribute('style', 'color: red')")
        w.page.wait_for_function("() => window.__cspViolations.length > 0")
        assert w.csp_violations()[0].startswith("style-src-attr blocked inline")
    finally:
        w.close()


def test_console_without_uplot(controller_factory, browser, monkeypatch, tmp_path):  # noqa: F811
    """No uPlot installed: the page links no vendor file, and the volume page says charts need it."""
    monkeypatch.setenv("EDGEVOL_CONSOLE_VENDOR", str(tmp_path / "no-vendor"))
    ctrl = controller_factory(None)
    ctrl.admin("POST", "/devices", json={"name": "d", "serial": "SN-D"})
    ctrl.admin("POST", "/devices/d/volumes", json={"name": "v", "origin": "blank", "max_size_bytes": 1 << 20})
    assert "uPlot" not in httpx.get(ctrl.url + "/", timeout=10).text
    assert httpx.get(ctrl.url + "/console/vendor/uPlot.iife.min.js", timeout=10).status_code == 404
    w = watched_page(browser)
    try:
        sign_in(w.page, ctrl.url, ctrl.token)
        w.page.goto(ctrl.url + "/#/devices/d/volumes/v")
        expect(w.page.get_by_text("Charts need uPlot")).to_be_visible()
        expect(w.page.locator(".meta")).to_contain_text("1 MiB")
        expect(w.page.get_by_text("No metrics yet")).to_be_visible()
        assert_clean(w, ctrl.token)
    finally:
        w.close()


def test_console_datastore_and_content_tree_forms(controller_factory, browser):  # noqa: F811
    """The other two forms: the API's refusals land next to FQDN and SHA-256; what they create appears in the
    tables (pending while no device runs) and in the selects of the forms that use it."""
    ctrl = controller_factory(None)
    ctrl.admin("POST", "/devices", json={"name": "d", "serial": "SN-D"})
    w = watched_page(browser)
    page = w.page
    try:
        sign_in(page, ctrl.url, ctrl.token)
        page.goto(ctrl.url + "/#/devices/d")
        page.get_by_role("button", name="New datastore").click()
        form = page.get_by_role("form", name="New datastore")
        form.get_by_label("Name", exact=True).fill("images")
        form.get_by_label("Type", exact=True).select_option("DsHttps")
        form.get_by_label("FQDN", exact=True).fill("ftp://images.example.com")
        form.get_by_role("button", name="Create").click()
        expect(field_error(form, "FQDN")).to_contain_text("is not an http(s) host")
        expect(field_error(form, "Name")).to_be_hidden()
        form.get_by_label("FQDN", exact=True).fill("https://images.example.com")
        form.get_by_label("Dpath", exact=True).fill("vm")
        form.get_by_label("Password", exact=True).fill("s3cret")
        form.get_by_role("button", name="Create").click()
        expect(page.locator('tr[data-datastore="images"] td.c-fqdn')).to_have_text("https://images.example.com")
        assert "s3cret" not in page.content()  # a password is never shown again

        page.get_by_role("button", name="New content tree").click()
        form = page.get_by_role("form", name="New content tree")
        expect(form.get_by_label("Datastore", exact=True).locator("option")).to_have_text(["images (DsHttps)"])
        form.get_by_label("Name", exact=True).fill("ubuntu")
        form.get_by_label("URL", exact=True).fill("ubuntu.qcow2")
        form.get_by_label("Format", exact=True).select_option("RAW")
        form.get_by_label("Max size", exact=True).fill("4 GiB")
        form.get_by_role("button", name="Create").click()
        expect(field_error(form, "SHA-256")).to_contain_text("sha256 is required for RAW content")
        form.get_by_label("SHA-256", exact=True).fill("ab" * 32)
        form.get_by_role("button", name="Create").click()
        tree = page.locator('tr[data-tree="ubuntu"]')
        expect(tree.locator("td.c-state")).to_have_text("pending")
        expect(tree.locator("td.c-size")).to_have_text("4 GiB")
        created = ctrl.admin("GET", "/devices/d/content-trees/ubuntu")
        assert created["format_name"] == "RAW" and created["max_size_bytes"] == 4 << 30

        # a volume from it: the origin select lists it; an empty size is fine (the image's size)
        page.get_by_role("button", name="New volume").click()
        form = page.get_by_role("form", name="New volume")
        form.get_by_label("Name", exact=True).fill("root")
        form.get_by_label("Origin", exact=True).select_option(label="From content tree ubuntu")
        form.get_by_role("button", name="Create").click()
        expect(volume_row(page, "root", 0).locator("td.c-origin")).to_have_text("from ubuntu")
        assert ctrl.admin("GET", "/devices/d/volumes/root")["content_tree_uuid"] == created["uuid"]
        assert_clean(w, ctrl.token, [(422, "/api/v1/datastores"), (422, "/api/v1/devices/d/content-trees")])
    finally:
        w.close()
