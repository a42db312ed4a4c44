"""The controller's web page is served and speaks to the admin API it documents."""

from __future__ import annotations

import re

import httpx

from tests.controller_fixture import controller_factory  # noqa: F401


def test_web_page_lists_devices_via_the_admin_api(controller_factory):  # noqa: F811
    ctrl = controller_factory(None)
    page = httpx.get(ctrl.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # every admin path the page calls exists in the OpenAPI document the server publishes
    openapi = httpx.get(ctrl.url + "/openapi.json", timeout=10).json()
    called = set(re.findall(r'api\("(/[a-z]+)"', page.text))
    assert called == {"/devices"}
    assert "/api/v1/devices" in openapi["paths"] and "/api/v1/devices/{device}/reported" in openapi["paths"]
    # and the data it renders needs the token
    assert httpx.get(ctrl.url + "/api/v1/devices", timeout=10).status_code == 401
