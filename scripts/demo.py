"""`make demo`: a device agent on embedded defaults, end to end.

Generates a small VM disk image, serves it from a local HTTP datastore,
writes an EdgeDevConfig with one blank and one downloaded volume, runs the
device agent until both volumes are created (progress bars on the way) and
prints the device's status table. Everything lives under ./demo-data.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from edgevol.api import messages as m
from edgevol.api.codec import save_edge_dev_config

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


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


def build_config(url: str, sha: str) -> m.EdgeDevConfig:
    cfg = m.EdgeDevConfig()
    cfg.id.uuid, cfg.id.version = str(uuid.uuid4()), "1"
    ds_id, ct_id = str(uuid.uuid4()), str(uuid.uuid4())
    cfg.datastores.add(id=ds_id, dType=m.DsType.DsHttp, fqdn=url, dpath="images")
    cfg.contentInfo.add(uuid=ct_id, dsId=ds_id, URL="demo-vm.qcow2", iformat=m.Format.QCOW2, sha256=sha,
                        maxSizeBytes=1 << 30, displayName="demo-vm image")
    blank = cfg.volumes.add(uuid=str(uuid.uuid4()), maxsizebytes=10 << 30, displayName="scratch-10G")
    blank.origin.type = m.VolumeContentOriginType.VCOT_BLANK
    disk = cfg.volumes.add(uuid=str(uuid.uuid4()), maxsizebytes=2 << 30, displayName="demo-vm-root")
    disk.origin.type = m.VolumeContentOriginType.VCOT_DOWNLOAD
    disk.origin.downloadContentTreeID = ct_id
    app = cfg.apps.add(displayname="demo-vm")
    app.uuidandversion.uuid, app.uuidandversion.version = str(uuid.uuid4()), "1"
    app.volumeRefList.add(uuid=blank.uuid)
    app.volumeRefList.add(uuid=disk.uuid)
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=ROOT / "demo-data")
    parser.add_argument("--image-mib", type=int, default=256)
    args = parser.parse_args()
    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    (work / "datastore" / "images").mkdir(parents=True)
    edgevol = [sys.executable, "-m", "edgevol.cli"]

    step(f"generating a {args.image_mib} MiB qcow2 VM image")
    sha = make_image(work / "datastore" / "images" / "demo-vm.qcow2", args.image_mib)
    print(f"    sha256 {sha}")

    step("starting a local HTTP datastore")
    server = subprocess.Popen([*edgevol, "datastore", "serve", str(work / "datastore")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        print(f"    serving {work / 'datastore'} at {url}")

        config = work / "config.json"
        save_edge_dev_config(config, build_config(url, sha))
        step(f"config with one blank and one downloaded volume: {config}")
        subprocess.run([*edgevol, "config", "validate", str(config)], check=True)

        data = work / "device"
        step(f"device agent: edgevol device run --data-dir {data} --config {config} --once")
        run = subprocess.run([*edgevol, "device", "run", "--data-dir", str(data), "--config", str(config),
                              "--once", "--progress", "--log-format", "console", "--log-level", "warning"])
        step("device status")
        subprocess.run([*edgevol, "device", "status", "--data-dir", str(data)], check=True)
        step("files on the device")
        for p in sorted((data / "volumes").iterdir()):
            st = p.stat()
            print(f"    {p.name}  apparent {st.st_size / MiB:.1f} MiB, on disk {st.st_blocks * 512 / MiB:.1f} MiB")
        print(f"\nTry: .venv/bin/edgevol device status --data-dir {data} -o json")
        return run.returncode
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
