"""`device run --once` imports only what its work needs (issue 15: start-up is nearly all imports).

An offline agent with no datastores never needs the HTTP client, the PKI, rich's progress bars,
protobuf's JSON support or any cloud SDK; each is imported by the code that first uses it. This pins
that down with the interpreter's own import log, so a new top-level import shows up as a failure
here rather than as a slower start on every device.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.configs import ConfigBuilder

NOT_AT_STARTUP = ("httpx", "cryptography", "edgevol.trust", "rich.progress", "google.protobuf.json_format",
                  "boto3", "azure", "google.cloud", "paramiko", "edgevol.cli.admin", "edgevol.controller")


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
