"""The controller's in-process cost per device request kind: wall time and SQL statements.

No HTTP and no simulator: ``DeviceAPI`` is called directly with real signed
bodies, so what is measured is the controller's own work per request
(verify, look up, build, store, seal). SQL statements are counted with a
cursor-execute listener on the store's engine (BEGIN issued by the SQLite
set-up counts too).

    .venv/bin/python bench/ctrl_costs.py [--db postgresql://...] [--reps 500] [-o json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from edgevol.api import messages as m
from edgevol.controller.context import ControllerContext, load_context
from edgevol.controller.device_api import DeviceAPI
from edgevol.trust.envelope import seal_message
from edgevol.trust.pki import Credential, create_self_signed

KINDS = ("config_304", "config_200", "info", "metrics")
VOLUMES = 2  # volumes per device, so an info post carries real work and metrics two samples


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *_args: Any) -> None:
        self.n += 1


def _device(ctx: ControllerContext, api: DeviceAPI, name: str) -> tuple[str, Credential, bytes]:
    """Create, register and attest one device; give it a datastore, a content tree and volumes."""
    onboarding = create_self_signed(f"{name} onboarding")
    dev = ctx.store.create_device(name, f"SN-{name}", onboarding.cert_pem)
    device = create_self_signed(f"{name} device")
    reg = m.ZRegisterMsg(pemCert=base64.b64encode(device.cert_pem), serial=f"SN-{name}")
    assert api.register(seal_message(reg, onboarding, include_cert=True)).status_code == 201
    path = f"/id/{dev.uuid}"
    assert path
    api.attest(seal_message(m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_NONCE), device), dev.uuid)
    api.attest(seal_message(m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_QUOTE, quote=m.ZAttestQuote()),
                            device), dev.uuid)
    token = ctx.store.integrity_token(dev.uuid) or b""
    ds = f"ds-{name}"
    ctx.store.create_datastore(ds, "DsHttp", "http://127.0.0.1:1", api_key="user", password="secret")
    ctx.store.create_content_tree(dev.uuid, "image", ds, "image.qcow2", "QCOW2", sha256="ab" * 32)
    for i in range(VOLUMES):
        ctx.store.create_volume(dev.uuid, f"vol{i}", content_tree="image", max_size_bytes=1 << 30)
    return dev.uuid, device, token


def _info(dev_uuid: str, vol_uuid: str, state: int) -> Any:
    info = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume, devId=dev_uuid)
    info.vinfo.uuid = vol_uuid
    info.vinfo.displayName = "vol"
    info.vinfo.state = state
    info.vinfo.progressPercentage = 100
    info.vinfo.resources.maxSizeBytes = 1 << 30
    info.vinfo.resources.curSizeBytes = 4096
    info.atTimeStamp.GetCurrentTime()
    return info


def _metrics(dev_uuid: str, vols: list[str]) -> Any:
    msg = m.ZMetricMsg(devID=dev_uuid)
    for v in vols:
        msg.vm.add(uuid=v, displayName="vol", totalBytes=1 << 30, usedBytes=4096, freeBytes=(1 << 30) - 4096)
    msg.atTimeStamp.GetCurrentTime()
    return msg


def measure(db_url: str | None, reps: int, data_dir: Path) -> dict[str, dict[str, float]]:
    ctx = load_context(data_dir, db_url)
    api = DeviceAPI(ctx)
    counter = _Counter()
    event.listen(ctx.store.engine, "before_cursor_execute", counter)
    dev_uuid, device, token = _device(ctx, api, "bench")
    vols = [v.uuid for v in ctx.store.list_volumes(dev_uuid)]
    start = getattr(api, "start", None)
    if start is not None:
        start()  # background writers, if this controller has them
    try:
        first = api.config(seal_message(m.ConfigRequest(integrity_token=token), device), dev_uuid, "10.0.0.1")
        digest = m.ConfigResponse.FromString(_payload(first.body)).configHash
        poll = seal_message(m.ConfigRequest(configHash=digest, integrity_token=token), device)
        stale = seal_message(m.ConfigRequest(configHash="0" * 64, integrity_token=token), device)
        states = [m.ZSwState.CREATING_VOLUME, m.ZSwState.CREATED_VOLUME]
        infos = [seal_message(_info(dev_uuid, vols[i % VOLUMES], states[i % 2]), device) for i in range(reps)]
        metrics = [seal_message(_metrics(dev_uuid, vols), device) for _ in range(reps)]
        calls: dict[str, Callable[[int], Any]] = {
            "config_304": lambda i: api.config(poll, dev_uuid, "10.0.0.1"),
            "config_200": lambda i: api.config(stale, dev_uuid, "10.0.0.1"),
            "info": lambda i: api.info(infos[i], dev_uuid),
            "metrics": lambda i: api.metrics(metrics[i], dev_uuid),
        }
        expected = {"config_304": 304, "config_200": 200, "info": 201, "metrics": 201}
        out: dict[str, dict[str, float]] = {}
        for kind in KINDS:
            times: list[float] = []
            counter.n = 0
            for i in range(reps):
                t0 = time.perf_counter()
                resp = calls[kind](i)
                times.append(time.perf_counter() - t0)
                if resp.status_code != expected[kind]:
                    raise SystemExit(f"{kind}: answered {resp.status_code} {bytes(resp.body)[:200]!r}")
            out[kind] = {"median_ms": statistics.median(times) * 1e3, "mean_ms": statistics.fmean(times) * 1e3,
                         "sql_per_request": counter.n / reps}
        return out
    finally:
        stop = getattr(api, "stop", None)
        if stop is not None:
            stop()
        ctx.store.close()


def measure_revision(rev: str, db_url: str | None, reps: int, scratch: Path) -> dict[str, dict[str, float]]:
    """The same measurement on the controller of git revision ``rev`` (a baseline), in a subprocess.

    This script is copied into a detached worktree of ``rev``: it needs only
    ``DeviceAPI(ctx)``'s request methods and the store's admin calls, which
    every revision since API v2 has.
    """
    repo = Path(__file__).resolve().parent.parent
    tree = scratch / f"rev-{rev[:12]}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
    try:
        shutil.copy2(Path(__file__), tree / "bench" / "ctrl_costs.py")
        cmd = [sys.executable, str(tree / "bench" / "ctrl_costs.py"), "--reps", str(reps), "-o", "json"]
        if db_url:
            cmd += ["--db", db_url]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree,
                             env={**os.environ, "PYTHONPATH": f"{tree / 'src'}:{tree}"})
        return json.loads(out.stdout)  # type: ignore[no-any-return]
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)


def _payload(body: bytes) -> bytes:
    return bytes(m.AuthContainer.FromString(bytes(body)).protectedPayload.payload)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=None, help="database URL (default: SQLite in a temporary directory)")
    p.add_argument("--reps", type=int, default=500)
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ctrl-costs-") as tmp:
        result = measure(args.db, args.reps, Path(tmp))
    if args.output == "json":
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        for kind, row in result.items():
            print(f"{kind:12s} median {row['median_ms']:7.3f} ms  mean {row['mean_ms']:7.3f} ms  "
                  f"SQL/request {row['sql_per_request']:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
