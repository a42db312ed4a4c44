"""`make demo`: a controller, a device agent and an operator, end to end.

Generates a small VM disk image (qcow2) and serves it from a local HTTP
datastore, starts the controller (SQLite) and a device agent that onboards
to it, then creates a datastore, a content tree, a blank and a downloaded
volume and an app through the admin CLI (`edgevol admin ...`, each command is
shown), watches the states the device reports until both volumes are
created, prints the controller's table of reported volumes and stops
everything. Exit status 0 only if all of that worked. Everything lives under
./demo-data (removed and recreated on each run).

    make demo                              # run and stop
    make demo DEMO_ARGS=--keep-running     # leave controller, device and web console up until Ctrl-C
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
EDGEVOL = [sys.executable, "-m", "edgevol.cli"]
DEVICE = "demo"
# What a demo directory may hold; anything else means it is not ours to delete.
DEMO_ENTRIES = {"datastore", "device", "controller", "logs", "config.json"}


class DemoFailed(Exception):
    """A step did not do what the demo needs; the message says which."""


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def shown(path: Path) -> str:
    """Paths as the user would type them from the repository root."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def make_image(path: Path, mib: int) -> str:
    """A qcow2 disk with random data (incompressible, like a real root fs) and a zero hole."""
    raw = path.with_suffix(".raw")
    rng = random.Random(42)
    with open(raw, "wb") as f:
        for i in range(mib):
            f.write(bytes(MiB) if i % 4 == 3 else rng.randbytes(MiB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_dir(work: Path) -> None:
    """Start from scratch, but never delete a directory that is not a demo's, nor a running demo's."""
    if work.exists():
        strange = sorted(p.name for p in work.iterdir() if p.name not in DEMO_ENTRIES)
        if strange:
            raise DemoFailed(f"{work} holds {', '.join(strange[:5])}: not a demo directory, refusing to delete it")
        lock = work / "device" / "agent.lock"
        if lock.exists():
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise DemoFailed(f"a demo is still running on {work} (--keep-running?); stop it first") from None
        shutil.rmtree(work)
    for sub in ("datastore/images", "controller", "device", "logs"):
        (work / sub).mkdir(parents=True)


class Services:
    """Background processes, each in its own process group so stopping one stops all it started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def check(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise DemoFailed(f"{name} exited with status {proc.returncode}; see {shown(self.logs / name)}.log")

    def stop_all(self) -> None:
        """SIGTERM each group (newest first), then SIGKILL what is left after 15 s."""
        for name, proc, log in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    print(f"    {name} did not stop in 15 s; killing it", flush=True)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:
                    pass
            log.close()
        self.procs.clear()

    def tail_logs(self, lines: int = 15) -> None:
        for name, _, _ in self.procs:
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            if text:
                print(f"--- last lines of {shown(self.logs / name)}.log", file=sys.stderr)
                print("\n".join(text), file=sys.stderr)


def wait_http(url: str, services: Services, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check()
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoFailed(f"{what} did not answer at {url} within {timeout:g} s")


def admin(*args: str, show: bool = True, capture: bool = False) -> str:
    """Run `edgevol admin ARGS` (server and token come from the environment the demo exported)."""
    if show:
        print(f"$ edgevol admin {shlex.join(args)}", flush=True)
    proc = subprocess.run([*EDGEVOL, "admin", *args], stdout=subprocess.PIPE if capture else None, text=True)
    if proc.returncode != 0:
        raise DemoFailed(f"'edgevol admin {shlex.join(args)}' exited {proc.returncode}")
    return proc.stdout or ""


def device_identity(data: Path) -> Path:
    out = subprocess.run([*EDGEVOL, "device", "identity", "--data-dir", str(data), "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    print(f"    onboarding certificate {shown(Path(doc['onboarding_cert_path']))}\n"
          f"    sha256 {doc['onboarding_cert_fingerprint']}")
    return Path(doc["onboarding_cert_path"])


def show_device_files(data: Path) -> None:
    for p in sorted((data / "volumes").iterdir()):
        st = p.stat()
        print(f"    {p.name}  apparent {st.st_size / MiB:.1f} MiB, on disk {st.st_blocks * 512 / MiB:.1f} MiB")


def keep_running(services: Services, ctrl_url: str, ds_url: str, work: Path) -> None:
    ctrl_dir = work / "controller"
    token = ctrl_dir / "admin.token"
    print(f"""
Controller and device keep running.
    console      {ctrl_url}/  (open it in a browser and sign in with the admin token)
    admin token  {shown(token)}  (show it: cat {shown(token)})
    controller   {ctrl_url}  (admin API {ctrl_url}/api/v1, API docs {ctrl_url}/docs)
    datastore    {ds_url}  (serving {shown(work / 'datastore')})
    logs         {shown(work / 'logs')}/
In the console: the fleet, then device "{DEVICE}" (its volumes, content trees, blobs and app, live); "New volume"
creates one, each volume's name opens its history and charts.
Or try, in another shell:
    export EDGEVOL_SERVER={ctrl_url} EDGEVOL_CONTROLLER_DIR={shown(ctrl_dir)}
    .venv/bin/edgevol admin reported --device {DEVICE}
    .venv/bin/edgevol admin volume create extra --device {DEVICE} --blank --size 1GiB
    .venv/bin/edgevol admin app set-volumes demo-vm --device {DEVICE} --volume scratch --volume demo-vm-root \\
        --volume extra
    .venv/bin/edgevol admin reported --device {DEVICE} --watch
    .venv/bin/edgevol admin metrics --device {DEVICE} --volume scratch
Press Ctrl-C to stop everything.""", flush=True)
    try:
        while True:
            services.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping", flush=True)


def run(args: argparse.Namespace, services: Services) -> None:
    work: Path = args.dir
    prepare_dir(work)
    ctrl_dir, dev_dir = work / "controller", work / "device"

    step(f"generating a {args.image_mib} MiB qcow2 VM image")
    sha = make_image(work / "datastore" / "images" / "demo-vm.qcow2", args.image_mib)
    print(f"    sha256 {sha}")

    ds_port = free_port()
    ds_url = f"http://127.0.0.1:{ds_port}"
    step(f"local HTTP datastore: edgevol datastore serve {shown(work / 'datastore')} --port {ds_port}")
    services.start("datastore", [*EDGEVOL, "datastore", "serve", str(work / "datastore"), "--port", str(ds_port)])
    wait_http(f"{ds_url}/images/demo-vm.qcow2", services, "the datastore")
    print(f"    serving at {ds_url}")

    ctrl_port = free_port()
    ctrl_url = f"http://127.0.0.1:{ctrl_port}"
    step(f"controller (SQLite): edgevol controller run --data-dir {shown(ctrl_dir)} --listen 127.0.0.1:{ctrl_port}")
    services.start("controller", [*EDGEVOL, "controller", "run", "--data-dir", str(ctrl_dir),
                                  "--listen", f"127.0.0.1:{ctrl_port}", "--log-format", "console"])
    wait_http(f"{ctrl_url}/api/v2/edgedevice/ping", services, "the controller")
    print(f"    listening at {ctrl_url}; admin token in {shown(ctrl_dir / 'admin.token')}")
    os.environ.update(EDGEVOL_SERVER=ctrl_url, EDGEVOL_CONTROLLER_DIR=str(ctrl_dir))
    os.environ.pop("EDGEVOL_TOKEN", None)  # the controller dir's token, not one from the caller's shell
    print(f"    export EDGEVOL_SERVER={ctrl_url} EDGEVOL_CONTROLLER_DIR={shown(ctrl_dir)}")

    step(f"onboarding the device: its identity (edgevol device identity --data-dir {shown(dev_dir)})")
    onboard_cert = device_identity(dev_dir)
    admin("device", "create", DEVICE, "--serial", "DEMO-0001", "--onboard-cert", shown(onboard_cert))
    step(f"device agent: edgevol device run --data-dir {shown(dev_dir)} --controller {ctrl_url} "
         f"--root-ca {shown(ctrl_dir / 'pki' / 'root-ca.pem')} --serial DEMO-0001")
    services.start("device", [*EDGEVOL, "device", "run", "--data-dir", str(dev_dir), "--controller", ctrl_url,
                              "--root-ca", str(ctrl_dir / "pki" / "root-ca.pem"), "--serial", "DEMO-0001",
                              "--poll-interval", "1", "--metrics-interval", "5", "--no-progress",
                              "--log-format", "console", "--log-level", "info"])
    print(f"    logging to {shown(work / 'logs' / 'device.log')}")

    step("the operator configures the device through the admin API")
    admin("datastore", "create", "demo-http", "--type", "DsHttp", "--fqdn", ds_url, "--dpath", "images")
    admin("content-tree", "create", "demo-vm-image", "--device", DEVICE, "--datastore", "demo-http",
          "--url", "demo-vm.qcow2", "--format", "QCOW2", "--sha256", sha, "--max-size", "1GiB")
    admin("volume", "create", "scratch", "--device", DEVICE, "--blank", "--size", "1GiB")
    admin("volume", "create", "demo-vm-root", "--device", DEVICE, "--from", "demo-vm-image", "--size", "1GiB")
    admin("app", "create", "demo-vm", "--device", DEVICE, "--volume", "scratch", "--volume", "demo-vm-root")
    admin("volume", "list", "--device", DEVICE)

    step("what the device reports, until both volumes are created")
    admin("reported", "--device", DEVICE, "--watch", "--until-state", "CREATED_VOLUME",
          "--timeout", f"{args.timeout:g}")

    step("the controller's table of reported volumes")
    admin("reported", "--device", DEVICE, "--kind", "volume")
    vols = json.loads(admin("reported", "--device", DEVICE, "--kind", "volume", "-o", "json",
                            show=False, capture=True))
    states = {v["display_name"]: v["state_name"] for v in vols}
    if states != {"scratch": "CREATED_VOLUME", "demo-vm-root": "CREATED_VOLUME"}:
        raise DemoFailed(f"the device reports {states}, not both volumes CREATED_VOLUME")
    step("the states the device went through for the downloaded volume")
    admin("history", "--device", DEVICE, "--volume", "demo-vm-root")
    step("files on the device")
    show_device_files(dev_dir)
    services.check()

    if args.keep_running:
        keep_running(services, ctrl_url, ds_url, work)
    else:
        print(f"\nRun 'make demo DEMO_ARGS=--keep-running' to keep the controller and device up and try "
              f"'edgevol admin' yourself. Logs: {shown(work / 'logs')}/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=ROOT / "demo-data", help="work directory (recreated)")
    parser.add_argument("--image-mib", type=int, default=256, help="size of the generated VM image")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the volumes")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave controller, datastore and device running until Ctrl-C")
    args = parser.parse_args()
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the finally below stops everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    services = Services(args.dir / "logs")
    started = time.monotonic()
    try:
        run(args, services)
        print(f"\ndemo finished in {time.monotonic() - started:.1f} s", flush=True)
        return 0
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
        services.tail_logs()
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr, flush=True)
        return 130
    finally:
        services.stop_all()


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
