"""edgevol's device against LF Edge Adam: onboard, create volumes, record the bytes as test vectors.

Adam (github.com/lf-edge/adam) is EVE's open-source reference controller. This
script runs a given Adam binary on 127.0.0.1 in a temporary directory and
drives it only through its command line and HTTP admin API; no Adam code is
used or copied. Steps:

1. ``adam generate``: a TLS server certificate and the signing and encrypt
   (ECDH) certificates, all self-signed RSA; ``adam server`` on a free port.
2. A local HTTP datastore (``edgevol datastore serve``) with a small raw disk
   and a small qcow2 image.
3. The device's onboarding certificate and a serial go to ``POST /admin/onboard``.
4. ``edgevol device run --controller https://127.0.0.1:PORT --trace-wire DIR``;
   the device counts as onboarded once Adam lists it as attested.
5. ``PUT /admin/device/UUID/config``: one DsHttp datastore, one content tree,
   one DOWNLOAD and one BLANK volume and an app using both. Adam reads this
   body with Go's encoding/json into its generated eve-api structs
   (pkg/server/adminHandler.go:334-338, not protojson): proto field names,
   enums and 64-bit integers as JSON numbers. The config is read back in
   binary to prove Adam stored exactly what was meant.
6. Wait until ``edgevol device status`` and Adam's info stream
   (``GET /admin/device/UUID/info`` with ``X-Stream: true``) both show the two
   volumes CREATED_VOLUME, and the device has polled again (304) and sent
   metrics for them.
7. A representative set of the recorded exchanges, the public certificates
   needed to verify them (never a private key) and manifest.json go to
   tests/vectors/adam/, which tests/test_adam_vectors.py replays.

Trust: Adam's signing and encrypt certificates are self-signed leaves, not
issued by a CA, so the device's --root-ca is a bundle of Adam's TLS
certificate (conf/root-certificate.pem) and those two: the device then pins
each of them.

    .venv/bin/python scripts/adam_interop.py [--adam-bin PATH] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable

import httpx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import DemoFailed, Services, free_port, make_image  # noqa: E402

from edgevol.api import messages as m  # noqa: E402
from edgevol.device.uplink.identity import identity_dir  # noqa: E402
from edgevol.device.uplink.wiretrace import load_exchange  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EDGEVOL = [sys.executable, "-m", "edgevol.cli"]
VECTORS = ROOT / "tests" / "vectors" / "adam"
SERIAL = "EDGEVOL-ADAM-0001"
MiB = 1 << 20
FORMATS = {"qcow2": m.Format.QCOW2, "raw": m.Format.RAW}


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_for(what: str, check: Callable[[], Any], services: Services, timeout: float, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; DemoFailed after ``timeout`` or if a service died."""
    deadline = time.monotonic() + timeout
    while True:
        services.check()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- Adam


class Adam:
    """One Adam server in ``work``: its certificates, its process, its admin API."""

    def __init__(self, binary: Path, work: Path, services: Services) -> None:
        self.binary = binary
        self.db = work / "adam" / "db"
        self.conf = work / "adam" / "conf"
        self.services = services
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._http: httpx.Client | None = None

    def _run(self, *args: str) -> None:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DemoFailed(f"adam {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")

    def generate_certs(self) -> None:
        """server.pem (TLS) in the database directory, signing.pem and encrypt.pem beside it, by CN."""
        self._run("generate", "--server", "--db-url", str(self.db), "--cn", "localhost",
                  "--hosts", "127.0.0.1,localhost")
        for cn in ("signing", "encrypt"):  # adam generate names the files after the CN (cmd/generate.go:32-34)
            self._run("generate", "--out", str(self.db), "--cn", cn, "--hosts", "127.0.0.1")

    def cert(self, name: str) -> Path:
        return self.db / f"{name}.pem"

    def start(self) -> None:
        # Certificate paths default to ./run/adam, not to --db-url (cmd/server.go:215-220): all given.
        argv = [str(self.binary), "server", "--ip", "127.0.0.1", "--port", str(self.port),
                "--db-url", str(self.db), "--conf-dir", str(self.conf)]
        for flag, name in (("server", "server"), ("signing", "signing"), ("encrypt", "encrypt")):
            argv += [f"--{flag}-cert", str(self.cert(name)), f"--{flag}-key", str(self.db / f"{name}-key.pem")]
        self.services.start("adam", argv)
        self._http = httpx.Client(base_url=self.url, verify=str(self.cert("server")), timeout=10, trust_env=False)

        def up() -> bool:
            try:
                return self.http.get("/api/v2/edgedevice/ping").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("Adam to answer /ping", up, self.services, 30, every=0.2)

    @property
    def http(self) -> httpx.Client:
        assert self._http is not None
        return self._http

    def admin(self, method: str, path: str, expect: int, **kw: Any) -> httpx.Response:
        resp = self.http.request(method, f"/admin{path}", **kw)
        if resp.status_code != expect:
            raise DemoFailed(f"Adam {method} /admin{path}: {resp.status_code} {resp.text.strip()[:300]}")
        return resp

    def onboard(self, cert_pem: bytes, serial: str) -> None:
        # OnboardCert{Cert []byte, Serial string}: []byte travels as base64 (adminHandler.go:42-53, 62-91).
        body = json.dumps({"Cert": base64.b64encode(cert_pem).decode(), "Serial": serial})
        self.admin("POST", "/onboard", 201, content=body, headers={"Content-Type": "application/json"})

    def attested_device(self) -> str | None:
        """The UUID of the one registered device once it has attested (integrity token issued)."""
        ids = self.admin("GET", "/device", 200).text.split()
        if len(ids) != 1:
            return None
        opts = self.http.get(f"/admin/device/{ids[0]}/options")
        if opts.status_code != 200:
            return None
        doc = opts.json()
        return ids[0] if doc.get("attested") and doc.get("integrityToken") else None

    def stop_client(self) -> None:
        if self._http is not None:
            self._http.close()


class InfoStream:
    """Adam's live info stream for one device (X-Stream, adminHandler.go:486-517), JSON lines kept in order."""

    def __init__(self, adam: Adam, device_uuid: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self._client = httpx.Client(base_url=adam.url, verify=str(adam.cert("server")), trust_env=False,
                                    timeout=httpx.Timeout(10, read=None))
        self._path = f"/admin/device/{device_uuid}/info"
        self._opened = threading.Event()
        self._resp: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, name="adam-info-stream", daemon=True)
        self._thread.start()
        if not self._opened.wait(10):
            raise DemoFailed("Adam's info stream did not open")

    def _read(self) -> None:
        try:
            with self._client.stream("GET", self._path, headers={"X-Stream": "true"}) as resp:
                self._resp = resp
                self._opened.set()
                for line in resp.iter_lines():
                    if line.strip():
                        self.lines.append(json.loads(line))
        except (httpx.HTTPError, json.JSONDecodeError):
            pass  # closed by stop(), or Adam went away; what was read is kept

    def volume_states(self) -> dict[str, str]:
        """The last state Adam relayed for each volume (protojson: enum names, camelCase)."""
        states: dict[str, str] = {}
        for doc in self.lines:
            vinfo = doc.get("vinfo")
            if doc.get("ztype") == "ZiVolume" and vinfo and "state" in vinfo:
                states[vinfo["uuid"]] = vinfo["state"]
        return states

    def stop(self) -> None:
        """Close the stream's connection: Adam's shutdown waits up to 10 s for open ones (server.go:284-290)."""
        stream = self._resp.extensions.get("network_stream") if self._resp is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread, which is blocked in recv
        self._thread.join(5)
        self._client.close()


# ---------------------------------------------------------------- config


def go_json(msg: Message) -> dict[str, Any]:
    """``msg`` as Go's encoding/json reads an eve-api struct: proto field names (the structs' json tags),
    enums and 64-bit integers as numbers, bytes as base64. (protojson would quote int64s, which
    encoding/json refuses.) Oneofs and maps are not handled: the config here has none."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        def one(v: Any, f: FieldDescriptor = field) -> Any:
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                return go_json(v)
            if f.type == FieldDescriptor.TYPE_BYTES:
                return base64.b64encode(v).decode()
            return int(v) if f.type == FieldDescriptor.TYPE_ENUM else v
        out[field.name] = [one(v) for v in value] if field.is_repeated else one(value)
    return out


def build_config(device_uuid: str, ds_url: str, image: str, fmt: str, sha: str, size: int) -> m.EdgeDevConfig:
    new = lambda: str(uuidlib.uuid4())  # noqa: E731
    cfg = m.EdgeDevConfig()
    cfg.id.uuid, cfg.id.version = device_uuid, "1"  # Adam cannot bump an absent version (adminHandler.go:370-385)
    ds = cfg.datastores.add(id=new(), dType=m.DsType.DsHttp, fqdn=ds_url, dpath="images")
    tree = cfg.contentInfo.add(uuid=new(), dsId=ds.id, URL=image, iformat=FORMATS[fmt], sha256=sha,
                               maxSizeBytes=size, displayName=f"adam-{fmt}-image", generation_count=1)
    tree.ds_ids_list.append(ds.id)
    root = cfg.volumes.add(uuid=new(), maxsizebytes=64 * MiB, displayName="adam-root", generationCount=1)
    root.origin.type = m.VolumeContentOriginType.VCOT_DOWNLOAD
    root.origin.downloadContentTreeID = tree.uuid
    blank = cfg.volumes.add(uuid=new(), maxsizebytes=32 * MiB, displayName="adam-scratch", generationCount=1)
    blank.origin.type = m.VolumeContentOriginType.VCOT_BLANK
    app = cfg.apps.add(displayname="adam-app", activate=False)
    app.uuidandversion.uuid, app.uuidandversion.version = new(), "1"
    for vol in (root, blank):
        app.volumeRefList.add(uuid=vol.uuid, generationCount=vol.generationCount)
    return cfg


# ---------------------------------------------------------------- datastore and device


def make_raw(path: Path, mib: int) -> str:
    """A raw disk: random data with a zero hole at the end; returns its sha256."""
    data = os.urandom((mib - 1) * MiB) + bytes(MiB)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def device_status(data_dir: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGEVOL, "device", "status", "--data-dir", str(data_dir), "-o", "json"],
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def stop_one(services: Services, name: str) -> None:
    """SIGTERM one service by its process group (it flushes its trace) and wait for it."""
    for n, proc, _ in services.procs:
        if n == name and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)


# ---------------------------------------------------------------- vectors


def exchanges(trace: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, load_exchange(p)) for p in sorted(trace.glob("[0-9][0-9][0-9][0-9]-*.json"))]


def payload(body: bytes, msg_type: Any) -> Any:
    """The payload of a recorded envelope, unverified: only to pick vectors (the test verifies)."""
    return msg_type.FromString(m.AuthContainer.FromString(body).protectedPayload.payload)


def pick_vectors(trace: Path, volumes: set[str]) -> list[tuple[str, Path]]:
    """(role, file) for a representative run: onboarding once, config 404/200/304, final info, metrics."""
    picked: list[tuple[str, Path]] = []
    taken: set[str] = set()
    config_200 = None
    last_info: dict[str, Path] = {}
    metrics = None
    for path, ex in exchanges(trace):
        kind, status = str(ex["path"]).rsplit("/", 1)[-1], ex["status"]
        role = None
        if kind == "attest":
            req = payload(ex["request_body"], m.ZAttestReq)
            role = {m.ZAttestReqType.ATTEST_REQ_CERT: "attest-cert",
                    m.ZAttestReqType.ATTEST_REQ_NONCE: "attest-nonce",
                    m.ZAttestReqType.ATTEST_REQ_QUOTE: "attest-quote"}.get(req.reqType)
        elif kind == "config":
            role = {404: "config-404", 200: "config-200", 304: "config-304"}.get(int(status))
            if role == "config-304" and config_200 is None:
                role = None
            config_200 = config_200 or (path if role == "config-200" else None)
        elif kind == "certs":
            role = "certs" if "certs" not in taken else ("certs-again" if config_200 else None)
        elif kind in ("register", "uuid"):
            role = kind
        elif kind == "info" and status == 201:
            msg = payload(ex["request_body"], m.ZInfoMsg)
            key = msg.vinfo.uuid or msg.cinfo.uuid or ("blobs" if msg.HasField("binfo") else "")
            if key:
                last_info[key] = path
        elif kind == "metrics" and status == 201:
            if volumes <= {v.uuid for v in payload(ex["request_body"], m.ZMetricMsg).vm}:
                metrics = metrics or path
        if role and role not in taken:
            taken.add(role)
            picked.append((role, path))
    picked += [("info", p) for p in sorted(last_info.values())]
    if metrics:
        picked.append(("metrics", metrics))
    missing = {"certs", "register", "uuid", "attest-cert", "attest-nonce", "attest-quote", "config-200", "config-304",
               "certs-again"} - taken
    if missing or not last_info or metrics is None:
        raise DemoFailed(f"the trace lacks {sorted(missing) or 'info or metrics'}")
    return sorted(picked, key=lambda rp: rp[1].name)


def adam_build_facts(binary: Path) -> dict[str, Any]:
    def run(*argv: str, cwd: Path | None = None) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    build = {}
    for line in run("go", "version", "-m", str(binary)).splitlines():
        parts = line.split()
        if line.startswith(str(binary)) and len(parts) > 1:
            build["go"] = parts[-1]
        elif len(parts) >= 2 and parts[0] == "build" and parts[1].startswith("vcs."):
            key, _, value = parts[1].partition("=")
            build[key] = value
    # Go stamps the source commit into a binary built from a git checkout (go version -m: vcs.revision).
    commit = build.get("vcs.revision", "")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise DemoFailed(f"cannot tell Adam's source commit: {binary} carries no vcs.revision "
                         "(build it with 'go build' inside Adam's git checkout)")
    return {"repository": "https://github.com/lf-edge/adam", "source_commit": commit,
            "binary_build_info": build, "go_version": run("go", "version") or None}


def write_vectors(out: Path, picked: list[tuple[str, Path]], certs: dict[str, bytes],
                  manifest: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.json"), *out.glob("*.pem")]:
        old.unlink()
    for name, pem in certs.items():
        if b"PRIVATE KEY" in pem:
            raise DemoFailed(f"{name} holds a private key; refusing to write it")
        (out / name).write_bytes(pem)
    rows = []
    for role, src in picked:
        ex = load_exchange(src)
        dest = f"{ex['seq']:04d}-{role}.json"
        shutil.copyfile(src, out / dest)
        rows.append({"file": dest, "role": role, "method": ex["method"], "path": ex["path"],
                     "status": ex["status"]})
    manifest["exchanges"] = rows
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"    {len(rows)} exchanges, {len(certs)} certificates, {total / 1024:.1f} KiB in {out}")


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace, work: Path, services: Services) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    adam = Adam(args.adam_bin, work, services)
    say(f"Adam: generate certificates and start the server ({args.adam_bin})")
    adam.generate_certs()
    adam.start()
    print(f"    {adam.url}, database {adam.db}")
    root_ca = work / "root-ca.pem"
    root_ca.write_bytes(b"".join(adam.cert(n).read_bytes() for n in ("server", "signing", "encrypt")))

    say("local HTTP datastore with a raw and a qcow2 image")
    images = work / "datastore" / "images"
    images.mkdir(parents=True)
    shas = {"qcow2": make_image(images / "adam-disk.qcow2", 4)}  # first: it uses and removes a .raw beside it
    shas["raw"] = make_raw(images / "adam-disk.raw", 3)
    sizes = {f: (images / f"adam-disk.{f}").stat().st_size for f in FORMATS}
    ds_port = free_port()
    ds_url = f"http://127.0.0.1:{ds_port}"
    services.start("datastore", [*EDGEVOL, "datastore", "serve", str(work / "datastore"), "--port", str(ds_port)])
    wait_for("the datastore", lambda: _http_ok(f"{ds_url}/images/adam-disk.raw"), services, 30, every=0.2)

    dev = work / "device"
    say("device identity, and its onboarding certificate registered at Adam with a serial")
    ident = json.loads(subprocess.run([*EDGEVOL, "device", "identity", "--data-dir", str(dev), "-o", "json"],
                                      check=True, capture_output=True, text=True).stdout)
    onboard_pem = Path(ident["onboarding_cert_path"]).read_bytes()
    device_pem = (identity_dir(dev) / "device.pem").read_bytes()
    adam.onboard(onboard_pem, SERIAL)

    trace = work / "trace"
    say("edgevol device run against Adam, tracing the wire")
    argv = [*EDGEVOL, "device", "run", "--data-dir", str(dev), "--controller", adam.url, "--root-ca", str(root_ca),
            "--serial", SERIAL, "--poll-interval", "1", "--metrics-interval", "3", "--trace-wire", str(trace),
            "--no-progress", "--log-format", "console"]
    print("    " + " ".join(argv[2:]))
    t_dev = time.monotonic()
    services.start("device", argv)
    device_uuid = wait_for("Adam to register and attest the device", adam.attested_device, services, args.timeout)
    timings["onboard"] = time.monotonic() - t_dev
    print(f"    device {device_uuid} registered and attested in {timings['onboard']:.1f} s")
    registered = adam.admin("GET", f"/device/{device_uuid}", 200).json()
    if _der(base64.b64decode(registered["Cert"])) != _der(device_pem):
        raise DemoFailed("Adam registered a certificate other than the device's")

    stream = InfoStream(adam, device_uuid)
    cfg = build_config(device_uuid, ds_url, f"adam-disk.{args.content_format}", args.content_format,
                       shas[args.content_format], sizes[args.content_format])
    say("PUT /admin/device/UUID/config (JSON as Go's encoding/json reads it)")
    t_cfg = time.monotonic()
    adam.admin("PUT", f"/device/{device_uuid}/config", 200, content=json.dumps(go_json(cfg)),
               headers={"Content-Type": "application/json"})
    stored = m.EdgeDevConfig.FromString(adam.admin("GET", f"/device/{device_uuid}/config", 200,
                                                   headers={"Accept": "application/x-proto-binary"}).content)
    if stored.SerializeToString(deterministic=True) != cfg.SerializeToString(deterministic=True):
        raise DemoFailed(f"Adam stored another config than the one sent:\n{stored}")
    volumes = [v.uuid for v in cfg.volumes]
    for v in cfg.volumes:
        print(f"    volume {v.uuid} {v.displayName} ({m.VolumeContentOriginType.Name(v.origin.type)})")

    def device_done() -> dict[str, str] | None:
        states = {v["uuid"]: v["state"] for v in device_status(dev).get("volumes", [])}
        return states if all(states.get(u) == "CREATED_VOLUME" for u in volumes) else None

    say("waiting for CREATED_VOLUME on the device and in Adam's info stream")
    device_states = wait_for("the device to create both volumes", device_done, services, args.timeout)
    timings["volumes_created_on_device"] = time.monotonic() - t_cfg
    adam_states = wait_for("Adam's info stream to show both volumes CREATED_VOLUME",
                           lambda: (s := stream.volume_states()) and all(s.get(u) == "CREATED_VOLUME"
                                                                        for u in volumes) and s,
                           services, args.timeout)
    timings["volumes_created_in_adam_info"] = time.monotonic() - t_cfg
    print(f"    device: {device_states}\n    Adam:   {adam_states}")

    def trace_complete() -> list[tuple[str, Path]] | None:
        try:
            return pick_vectors(trace, set(volumes))
        except DemoFailed:
            return None

    wait_for("a config 304 and metrics for both volumes in the trace", trace_complete, services, 60)
    stop_one(services, "device")
    stream.stop()
    adam.stop_client()
    picked = pick_vectors(trace, set(volumes))
    timings["total"] = time.monotonic() - t0

    say(f"writing vectors to {args.out}")
    certs = {"adam-server.pem": adam.cert("server").read_bytes(), "adam-signing.pem": adam.cert("signing").read_bytes(),
             "adam-encrypt.pem": adam.cert("encrypt").read_bytes(), "root-ca.pem": root_ca.read_bytes(),
             "device.pem": device_pem, "onboard.pem": onboard_pem}
    manifest = {
        "what": "edgevol device onboarding to LF Edge Adam and creating volumes; made by scripts/adam_interop.py",
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "adam": adam_build_facts(args.adam_bin),
        "edgevol": {"commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(_git("status", "--porcelain"))},
        "device": {"uuid": device_uuid, "serial": SERIAL, "cert": "device.pem", "onboarding_cert": "onboard.pem"},
        "controller": {"root_ca": "root-ca.pem", "root_ca_is": "adam-server.pem + adam-signing.pem + "
                       "adam-encrypt.pem (self-signed leaves, pinned)", "tls_cert": "adam-server.pem",
                       "signing_cert": "adam-signing.pem", "encrypt_cert": "adam-encrypt.pem"},
        "config": {"datastore": {"id": cfg.datastores[0].id, "fqdn": ds_url, "dpath": "images"},
                   "content_tree": {"uuid": cfg.contentInfo[0].uuid, "format": args.content_format,
                                    "url": cfg.contentInfo[0].URL, "sha256": cfg.contentInfo[0].sha256},
                   "volumes": [{"uuid": v.uuid, "displayName": v.displayName,
                                "origin": m.VolumeContentOriginType.Name(v.origin.type),
                                "expected_state": "CREATED_VOLUME"} for v in cfg.volumes],
                   "app": {"uuid": cfg.apps[0].uuidandversion.uuid, "displayname": cfg.apps[0].displayname}},
        "expected_status": {"certs": 200, "register": 201, "uuid": 200, "attest-cert": 201, "attest-nonce": 201, "attest-quote": 201,
                            "config-404": 404, "config-200": 200, "certs-again": 200, "config-304": 304,
                            "info": 201, "metrics": 201},
        "final_states": {"device_status": device_states, "adam_info_stream": adam_states},
        "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    write_vectors(args.out, picked, certs, manifest)
    say(f"done in {timings['total']:.1f} s: onboarded in {timings['onboard']:.1f} s, volumes created "
        f"{timings['volumes_created_on_device']:.1f} s after the config was PUT")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _der(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adam-bin", type=Path,
                        default=Path(os.environ.get("ADAM_BIN") or shutil.which("adam") or "adam"),
                        help="the Adam binary (default $ADAM_BIN, or adam on the PATH)")
    parser.add_argument("--out", type=Path, default=VECTORS, help="where the vectors go (replaced)")
    parser.add_argument("--content-format", choices=sorted(FORMATS), default="qcow2",
                        help="which of the two images the content tree names")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each milestone")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, trace, Adam db)")
    args = parser.parse_args()
    if not os.access(args.adam_bin, os.X_OK):
        parser.error(f"{args.adam_bin} is not an executable Adam binary (see --adam-bin)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="edgevol-adam-"))
    (work / "logs").mkdir()
    services = Services(work / "logs")
    try:
        run(args, work, services)
        return 0
    except DemoFailed as exc:
        print(f"\nadam interop failed: {exc}", file=sys.stderr, flush=True)
        services.tail_logs(25)
        args.keep = True
        return 1
    finally:
        services.stop_all()
        if args.keep:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
