"""`device run --once` imports only what its work needs (issue 15: start-up is nearly all imports).

An offline agent with no datastores never needs the HTTP client, the PKI, rich (progress bars, console
logs), structlog (JSON lines are written by edgevol.log itself), asyncio, protobuf's JSON support, any
datastore client or cloud SDK, nor the OVA and container-image unpackers (tarfile, XML, zstandard); each is
imported by the code that first uses it. This pins that down with the interpreter's own import log, so a
new top-level import shows up as a failure here rather than as a slower start on every device. It checks
what is imported, not how long it takes: timings belong to BENCHMARKS.md, not to a suite run on busy machines.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.configs import ConfigBuilder

NOT_AT_STARTUP = (
    # third-party and standard-library packages
    "httpx", "cryptography", "rich", "structlog", "asyncio", "google.protobuf.json_format", "boto3", "azure",
    "google.cloud", "paramiko", "python_socks", "tarfile", "xml", "zstandard", "ctypes",
    # edgevol: other commands, the uplink, datastore clients, manifest parsing, the OVA and image unpackers
    "edgevol.cli.admin", "edgevol.cli.output", "edgevol.cli.progress", "edgevol.controller", "edgevol.trust",
    "edgevol.device.uplink.client", "edgevol.device.uplink.online", "edgevol.device.datastores.http",
    "edgevol.device.datastores.registry", "edgevol.device.datastores.s3", "edgevol.device.datastores.sftp",
    "edgevol.device.datastores.azure", "edgevol.device.datastores.gcs", "edgevol.device.datastores.ranged",
    "edgevol.device.datastores.oci_manifest", "edgevol.device.volumes.ova", "edgevol.device.volumes.rootfs",
    "edgevol.device.volumes.tarsafe",
)


# The CLI run in a fresh interpreter that writes, as it exits, every module it holds: complete whichever
# way a module was imported (the interpreter's -X importtime misses importlib.import_module).
_RUN = ("import atexit, json, sys\n"
        "atexit.register(lambda: print('MODULES ' + json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
        "from edgevol.cli.main import main\n"
        "sys.argv = ['edgevol', *sys.argv[1:]]\n"
        "main()\n")


def imported_by(argv: list[str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES ")]
    return set(json.loads(line.removeprefix("MODULES ")))


def test_an_offline_run_on_an_empty_config_imports_nothing_it_does_not_use(tmp_path) -> None:
    cfg = ConfigBuilder().save(tmp_path / "empty.pb")
    mods = imported_by(["device", "run", "--data-dir", str(tmp_path / "dev"), "--config", str(cfg), "--once",
                        "--no-progress"])
    assert "edgevol.device.reconcile.agent" in mods  # the log is complete: the agent itself is there
    loaded = sorted(m for m in mods if any(m == bad or m.startswith(bad + ".") for bad in NOT_AT_STARTUP))
    assert loaded == [], loaded


def test_the_admin_commands_still_load_on_demand(tmp_path) -> None:
    mods = imported_by(["admin", "--help"])
    assert "edgevol.cli.admin" in mods and "httpx" in mods
    help_text = subprocess.run([sys.executable, "-m", "edgevol.cli", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert "admin" in help_text and "device" in help_text
