"""`edgevol admin`: the operator CLI as a subprocess against a real controller and device agent."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgevol.cli.admin import parse_size
from tests.configs import sha256_file
from tests.conftest import EDGEVOL, make_raw_image
from tests.controller_fixture import (Controller, agent_factory, controller_factory, free_port,  # noqa: F401
                                      wait_for)

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    """The caller's environment without EDGEVOL_* settings that would change what the CLI talks to."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEVOL_")} | {"PYTHONUNBUFFERED": "1"}


def admin_raw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEVOL, "admin", *args], capture_output=True, text=True, timeout=timeout, env=_env())


def admin(ctrl: Controller, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return admin_raw("--server", ctrl.url, "--controller-dir", str(ctrl.data_dir), *args, timeout=timeout)


def ok(ctrl: Controller, *args: str) -> Any:
    """Run a command that must succeed; its JSON if it printed any."""
    proc = admin(ctrl, *args)
    assert proc.returncode == 0, f"edgevol admin {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout) if "-o" in args and "json" in args else proc.stdout


def refused(ctrl: Controller, *args: str, code: int = 1) -> str:
    proc = admin(ctrl, *args)
    assert proc.returncode == code, f"expected exit {code}, got {proc.returncode}: {proc.stdout}{proc.stderr}"
    return proc.stderr


def test_every_object_through_the_cli(controller_factory, agent_factory, datastore_dir, http_server,  # noqa: F811
                                      tmp_path):
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    pem = tmp_path / "onboard.pem"
    pem.write_text(agent.onboarding_pem())
    raw = make_raw_image(datastore_dir / "disk.raw", 4)

    dev = ok(ctrl, "device", "create", "dev1", "--serial", "SN-dev1", "--onboard-cert", str(pem), "-o", "json")
    assert dev["name"] == "dev1" and dev["serial"] == "SN-dev1" and dev["onboard_cert_pem"] == pem.read_text()
    assert [(d["name"], d["uuid"]) for d in ok(ctrl, "device", "list", "-o", "json")] == [("dev1", dev["uuid"])]

    local = ok(ctrl, "datastore", "create", "local", "--type", "dshttp", "--fqdn", http_server.url, "-o", "json")
    ok(ctrl, "datastore", "create", "secure", "--type", "DsHttps", "--fqdn", "https://images.example",
       "--ca-cert", str(ctrl.root_ca), "--api-key", "user", "--password", "s3cret")
    stores = {d["name"]: d for d in ok(ctrl, "datastore", "list", "-o", "json")}
    assert stores["local"]["type_name"] == "DsHttp" and stores["local"]["fqdn"] == http_server.url
    assert stores["secure"]["ca_pems"] == [ctrl.root_ca.read_text()]
    assert "s3cret" not in json.dumps(stores) and "api_key" not in stores["secure"]

    ok(ctrl, "content-tree", "create", "disk", "--device", "dev1", "--datastore", "local", "--url", "disk.raw",
       "--format", "raw", "--sha256", sha256_file(raw), "--max-size", "64MiB")
    [tree] = ok(ctrl, "content-tree", "list", "--device", "dev1", "-o", "json")
    assert (tree["name"], tree["format_name"], tree["max_size_bytes"], tree["datastore_uuid"], tree["sha256"]) == \
        ("disk", "RAW", 64 * MiB, local["uuid"], sha256_file(raw))

    ok(ctrl, "volume", "create", "data", "--device", "dev1", "--blank", "--size", "512MiB")
    ok(ctrl, "volume", "create", "root", "--device", "dev1", "--from", "disk", "--size", "1G")
    vols = {v["name"]: v for v in ok(ctrl, "volume", "list", "--device", "dev1", "-o", "json")}
    assert (vols["data"]["origin"], vols["data"]["max_size_bytes"]) == ("blank", 512 * MiB)
    assert (vols["root"]["origin"], vols["root"]["max_size_bytes"], vols["root"]["content_tree_uuid"]) == \
        ("download", 1 << 30, tree["uuid"])
    table = ok(ctrl, "volume", "list", "--device", "dev1")
    assert "from disk" in table and "512.0 MiB" in table

    ok(ctrl, "app", "create", "web", "--device", "dev1", "--volume", "data", "--volume", "root")
    [app] = ok(ctrl, "app", "list", "--device", "dev1", "-o", "json")
    assert [r["volume_uuid"] for r in app["volume_refs"]] == [vols["data"]["uuid"], vols["root"]["uuid"]]

    # refusals carry the server's words and exit 1; usage errors exit 2
    err = refused(ctrl, "content-tree", "delete", "disk", "--device", "dev1")
    assert "content tree 'disk' is used by volumes root" in err and "409" in err
    assert "used by apps web" in refused(ctrl, "volume", "delete", "data", "--device", "dev1")
    assert "volume 'nope' not found" in refused(ctrl, "volume", "get", "nope", "--device", "dev1")
    assert "needs --size" in refused(ctrl, "volume", "create", "x", "--device", "dev1", "--blank", code=2)
    refused(ctrl, "volume", "create", "x", "--device", "dev1", "--blank", "--from", "disk", "--size", "1G", code=2)

    # a device agent creates both; the watch ends by itself
    agent.start()
    watch = admin(ctrl, "reported", "--device", "dev1", "--watch", "--until-state", "CREATED_VOLUME",
                  "--timeout", "90", "--interval", "0.3")
    assert watch.returncode == 0, watch.stderr
    assert "CREATED_VOLUME" in watch.stdout and "every volume reports CREATED_VOLUME" in watch.stdout
    reported = {r["display_name"]: r for r in ok(ctrl, "reported", "--device", "dev1", "--kind", "volume",
                                                   "-o", "json")}
    assert {n: r["state_name"] for n, r in reported.items()} == {"data": "CREATED_VOLUME", "root": "CREATED_VOLUME"}
    assert reported["data"]["max_size_bytes"] == 512 * MiB and reported["root"]["cur_size_bytes"] > 0
    table = ok(ctrl, "reported", "--device", "dev1", "--kind", "volume")
    assert table.count("CREATED_VOLUME") == 2 and "512.0 MiB" in table

    # update (a new size is a new generation) and purge: the watch waits for the new generation, not the old one
    updated = ok(ctrl, "volume", "update", "data", "--device", "dev1", "--size", "1GiB", "-o", "json")
    assert (updated["max_size_bytes"], updated["generation_count"], updated["purged_apps"]) == (1 << 30, 1, ["web"])
    assert ok(ctrl, "volume", "purge", "data", "--device", "dev1", "-o", "json")["generation_count"] == 2
    watch = admin(ctrl, "reported", "--device", "dev1", "--watch", "--until-state", "CREATED_VOLUME",
                  "--timeout", "90", "--interval", "0.3", "-o", "json")
    assert watch.returncode == 0, watch.stderr
    events = [json.loads(line) for line in watch.stdout.splitlines()]
    assert any(e["display_name"] == "data" and e["generation"] == 2 and e["state_name"] == "CREATED_VOLUME"
               for e in events)

    samples = wait_for(lambda: ok(ctrl, "metrics", "--device", "dev1", "--volume", "root", "-o", "json"), 60,
                       "metrics for root")
    assert samples[-1]["total_bytes"] > 0
    assert ok(ctrl, "content-tree", "get", "disk", "--device", "dev1", "-o", "json")["uuid"] == tree["uuid"]

    # take it all down again through the CLI
    assert len(ok(ctrl, "app", "set-volumes", "web", "--device", "dev1", "--volume", "root", "-o", "json")[
        "volume_refs"]) == 1
    ok(ctrl, "volume", "delete", "data", "--device", "dev1")
    ok(ctrl, "app", "delete", "web", "--device", "dev1")
    ok(ctrl, "volume", "delete", "root", "--device", "dev1")
    ok(ctrl, "content-tree", "delete", "disk", "--device", "dev1")
    ok(ctrl, "datastore", "delete", "local")
    ok(ctrl, "datastore", "delete", "secure")
    assert ok(ctrl, "volume", "list", "--device", "dev1", "-o", "json") == []
    wait_for(lambda: ok(ctrl, "reported", "--device", "dev1", "--kind", "volume", "-o", "json") == [], 60,
             "volumes reported gone")
    ok(ctrl, "device", "delete", "dev1")
    assert ok(ctrl, "device", "list", "-o", "json") == []


def test_unreachable_controller_exits_3_and_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = admin_raw("--server", url, "--token", "t", "volume", "list", "--device", "d")
    assert proc.returncode == 3
    assert f"cannot reach the controller at {url}" in proc.stderr


def test_wrong_or_missing_token(controller_factory, tmp_path):  # noqa: F811
    ctrl = controller_factory(None)
    proc = admin_raw("--server", ctrl.url, "--token", "wrong", "device", "list")
    assert proc.returncode == 1
    assert "refused the admin token" in proc.stderr and "--token" in proc.stderr
    token_file = tmp_path / "token"
    token_file.write_text(ctrl.token + "\n")
    assert admin_raw("--server", ctrl.url, "--token-file", str(token_file), "device", "list", "-o",
                     "json").stdout.strip() == "[]"
    missing = admin_raw("--server", ctrl.url, "device", "list")
    assert missing.returncode == 2 and "no admin token" in missing.stderr
    assert admin_raw("--server", "ftp://x", "--token", "t", "device", "list").returncode == 2


def test_watch_times_out_with_exit_1_naming_what_is_missing(controller_factory):  # noqa: F811
    ctrl = controller_factory(None)
    ok(ctrl, "device", "create", "lonely")
    ok(ctrl, "volume", "create", "scratch", "--device", "lonely", "--blank", "--size", "1MiB")
    proc = admin(ctrl, "reported", "--device", "lonely", "--watch", "--until-state", "CREATED_VOLUME",
                 "--timeout", "1", "--interval", "0.2")
    assert proc.returncode == 1
    assert "timed out" in proc.stderr and "scratch (not reported yet)" in proc.stderr
    # names are quoted in URLs: characters that mean something there still name the object
    ok(ctrl, "volume", "create", "odd name #1?", "--device", "lonely", "--blank", "--size", "1MiB")
    assert ok(ctrl, "volume", "get", "odd name #1?", "--device", "lonely", "-o", "json")["name"] == "odd name #1?"


@pytest.mark.parametrize("text,expected", [
    ("4096", 4096), ("10GiB", 10 << 30), ("512MiB", 512 * MiB), ("1G", 1 << 30), ("1g", 1 << 30),
    ("64K", 64 << 10), ("1.5GiB", 3 << 29), ("2 TiB", 2 << 40), ("100B", 100), ("1Gi", 1 << 30), ("3MB", 3 * MiB),
])
def test_sizes_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1.5", "ten", "-1G", "1XB", "0.1K"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_bad_size_on_the_command_line_is_a_usage_error():
    proc = admin_raw("--token", "t", "volume", "create", "v", "--device", "d", "--blank", "--size", "10 gigs")
    assert proc.returncode == 2 and "'10 gigs' is not a size" in proc.stderr


def test_demo_runs_end_to_end(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--dir", str(work),
                           "--image-mib", "8", "--timeout", "60"], capture_output=True, text=True, timeout=180,
                          env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for command in ("edgevol admin device create demo", "edgevol admin datastore create",
                    "edgevol admin content-tree create", "edgevol admin volume create scratch",
                    "edgevol admin app create demo-vm", "--until-state CREATED_VOLUME"):
        assert command in proc.stdout
    final = proc.stdout.split("the controller's table of reported volumes", 1)[1].split("==>", 1)[0]
    assert final.count("CREATED_VOLUME") == 2 and "scratch" in final and "demo-vm-root" in final
    # everything was stopped: the device agent's lock is free again
    with open(work / "device" / "agent.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_cli_creates_each_cloud_datastore_type_and_the_device_config_carries_it(controller_factory,  # noqa: F811
                                                                                    tmp_path):
    """One datastore of each cloud type, with the fields as EVE's downloader maps them (syncop.go)."""
    from edgevol.api import messages as m
    from edgevol.controller.configbuild import build_config
    from edgevol.controller.store import ControllerStore

    ctrl = controller_factory(None)
    ok(ctrl, "device", "create", "dev1", "--serial", "SN1")
    key_file = tmp_path / "gcs-key.json"
    key_file.write_text('{"type": "service_account", "client_email": "reader@example.iam"}\n')
    made = {
        "s3": ("DsS3", "https://s3.example.net", "images/vm", "--api-key", "AKIA1", "--password", "s3-secret",
               "--region", "eu-west-1"),
        "azure": ("DsAzureBlob", "https://acct.blob.core.windows.net", "images", "--api-key", "acct",
                  "--password", "azure-key"),
        "gcs": ("DsGoogleStorage", "", "bucket/vm", "--password-file", str(key_file)),
        "sftp": ("DsSFTP", "files.example.net:2222", "srv/images", "--api-key", "reader", "--password", "pw"),
    }
    for name, (kind, fqdn, dpath, *rest) in made.items():
        ok(ctrl, "datastore", "create", name, "--type", kind, "--fqdn", fqdn, "--dpath", dpath, *rest)
        ok(ctrl, "content-tree", "create", f"os-{name}", "--device", "dev1", "--datastore", name, "--url",
           "os.raw", "--format", "RAW", "--sha256", "ab" * 32)
    listed = ok(ctrl, "datastore", "list", "-o", "json")
    assert "s3-secret" not in json.dumps(listed) and "reader@example" not in json.dumps(listed)
    assert "container" in refused(ctrl, "datastore", "create", "nocontainer", "--type", "DsAzureBlob", "--fqdn",
                                  "https://acct.blob.core.windows.net")
    assert "SFTP address" in refused(ctrl, "datastore", "create", "badsftp", "--type", "DsSFTP", "--fqdn",
                                     "https://files.example.net")
    assert "not both" in refused(ctrl, "datastore", "create", "both", "--type", "DsGoogleStorage", "--dpath", "b",
                                 "--password", "x", "--password-file", str(key_file), code=2)
    with ControllerStore(ctrl.db_url) as store:
        sent = {m.DsType.Name(ds.dType): ds for ds in build_config(store, "dev1").datastores}
    assert set(sent) == {"DsS3", "DsAzureBlob", "DsGoogleStorage", "DsSFTP"}
    assert (sent["DsS3"].fqdn, sent["DsS3"].dpath, sent["DsS3"].region) == ("https://s3.example.net", "images/vm",
                                                                             "eu-west-1")
    assert (sent["DsAzureBlob"].apiKey, sent["DsAzureBlob"].dpath) == ("acct", "images")
    assert sent["DsGoogleStorage"].password == key_file.read_text().rstrip("\n")  # the file's content, verbatim
    assert (sent["DsSFTP"].fqdn, sent["DsSFTP"].apiKey) == ("files.example.net:2222", "reader")


def test_a_reported_error_shows_when_the_device_tries_again():
    """The reported table's error text: a warning says so, and the retry condition (attempts so far and
    the time of the next one, as the device writes it) follows the description."""
    from edgevol.cli.admin import _error_text

    waiting = {"error": {"description": "HTTP 503", "severity": 2,
                         "retry_condition": "attempt 1 of 5 failed; attempt 2 at 2026-11-29T21:03:04Z, 3.1s after "
                                            "this failure"}}
    assert _error_text(waiting) == ("warning: HTTP 503 (retry: attempt 1 of 5 failed; attempt 2 at "
                                    "2026-11-29T21:03:04Z, 3.1s after this failure)")
    assert _error_text({"error": {"description": "gone", "severity": 3, "retry_condition": ""}}, "error: ") == \
        "error: gone"
    assert _error_text({"error": None}) == ""
