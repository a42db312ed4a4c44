"""Network faults between real device agents and real servers, through edgevol's fault proxy.

:class:`edgevol.tools.faultproxy.FaultProxy` sits between a device agent (the
real CLI, a subprocess) and a real server: the HTTP datastore, docker-registry
or the controller. For the datastores one ``device run --once`` downloads one
object per fault label in parallel, each behind its own seeded rules, and the
tests check each object as a user would: states, error texts, the agent's own
log of failed attempts, the bytes of the volume, the content store.

Transient faults (drops, stalls longer than the read timeout, truncation, 5xx,
429, an ignored Range, a one-off corruption or lie about the length) cost one
attempt each, are retried after a backoff (or the server's Retry-After) and
the object completes with exactly the source's bytes. Faults that persist end
in a clear ERROR after the configured number of attempts, with no volume and
nothing of the object in the content store. Whatever happens, the CAS never
holds a blob whose sha256 differs from its name. In front of the controller,
drops, 5xx and stalls on register, certs, config, info and metrics slow the
device down but lose nothing: what the controller reports equals what the
device says, through several config changes.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edgevol.tools.faultproxy import FaultProxy, Kind, Rule, Seen
from edgevol.tools.httpserve import serve
from edgevol.tools.oci_image import Layer, build_image, push
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import by_name, device_status, guest_bytes, make_raw_image, run_cli, volume_sha256
from tests.controller_fixture import (  # noqa: F401
    Controller, agent_factory, controller_factory, controller_view, device_view, onboard, wait_for)
from tests.registry_fixture import RunningRegistry, registry  # noqa: F401
from tests.reliability.figures import record, scale

MiB = 1 << 20
READ_TIMEOUT = 1.0  # edgevol.download.read.timeout.seconds in every config here
STALL = READ_TIMEOUT + 1.5  # longer than the device waits for a silent server
IMAGE_MIB = scale(3, 24)
ATTEMPTS = 8  # enough for the transient rules below, which give up after at most 5 injections
PERSISTENT_ATTEMPTS = 3


# -- helpers --------------------------------------------------------------------


@pytest.fixture
def proxies() -> Iterator[Callable[..., FaultProxy]]:
    """``make(upstream, seed=0)``: started proxies, stopped (stalls woken) at teardown."""
    started: list[FaultProxy] = []

    def make(upstream: str, seed: int = 0) -> FaultProxy:
        proxy = FaultProxy(upstream, seed=seed).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def cas_blobs(data: Path, only: set[str] | None = None) -> dict[str, int]:
    """name -> size of the blobs in the device's CAS (or those of them in ``only``), each checked against its name."""
    blobs = data / "cas" / "blobs" / "sha256"
    found = {}
    for path in (blobs.iterdir() if blobs.is_dir() else []):
        if only is None or path.name in only:
            assert sha256_file(path) == path.name, f"CAS blob {path.name} holds other bytes"
            found[path.name] = path.stat().st_size
    return found


def volume_files(data: Path) -> list[Path]:
    vols = data / "volumes"
    return sorted(p for p in vols.iterdir() if not p.name.startswith(".")) if vols.is_dir() else []


def log_events(stderr: str, event: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines (stderr is not a terminal here) for ``event``."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == event:
                out.append(doc)
    return out


def run_once(cfg: Path, data: Path) -> subprocess.CompletedProcess[str]:
    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", timeout=120)
    assert "task crashed" not in proc.stderr, proc.stderr  # every failure must land in a state
    return proc


@dataclass
class Run:
    """One ``device run --once`` through a fault proxy, shared by the checks of a scenario group."""

    data: Path
    proc: subprocess.CompletedProcess[str]
    status: dict[str, Any]
    proxy: FaultProxy
    images: dict[str, Path]  # label -> source file
    rules: dict[str, list[Rule]]  # label -> its rules, as added (with their counters)

    def counts(self, label: str) -> dict[str, int]:
        """Faults injected for one label, by kind."""
        out: Counter[str] = Counter()
        for rule in self.rules[label]:
            out[rule.kind.value] += rule.injected
        return dict(out)

    def gets(self, label: str) -> list[Seen]:
        return self.proxy.requests_for(rf"/{label}\.raw$", "GET")


def run_http_group(root: Path, groups: dict[str, list[Rule]], attempts: int, seed: int) -> Run:
    """One content tree and volume per label, each behind its own rules, downloaded in parallel."""
    store = root / "datastore"
    store.mkdir()
    server = serve(store)
    proxy = FaultProxy(server.url.removeprefix("http://"), seed=seed).start()
    try:
        b = (ConfigBuilder().fast_retries(attempts)
             .item("edgevol.download.read.timeout.seconds", str(READ_TIMEOUT))
             .item("edgevol.download.parallel", str(len(groups))))
        ds = b.datastore(proxy.url)
        images, rules = {}, {}
        for i, (label, group) in enumerate(groups.items()):
            image = images[label] = make_raw_image(store / f"{label}.raw", IMAGE_MIB, seed=seed * 100 + i)
            rules[label] = [proxy.add(replace(r, path=rf"/{label}\.raw$")) for r in group]
            ct = b.content_tree(ds, image.name, sha256_file(image), "raw", name=label)
            b.download_volume(ct, image.stat().st_size, name=label)
        data = root / "dev"
        proc = run_once(b.save(root / "config.json"), data)
        return Run(data, proc, device_status(data), proxy, images, rules)
    finally:
        proxy.stop()
        server.shutdown()


def failed_attempts(run: Run, sha: str) -> list[dict[str, Any]]:
    return [e for e in log_events(run.proc.stderr, "download attempt failed") if e.get("sha256") == sha]


# -- HTTP datastore: transient faults are retried and the volume is exact ------------

# label -> rules on that label's image; each gives up after a few injections so the download can finish.
TRANSIENT: dict[str, list[Rule]] = {
    "drop": [Rule(Kind.DROP, times=scale(1, 4))],
    "stall-mid-body": [Rule(Kind.STALL, phase="body", seconds=STALL, times=scale(1, 2))],
    "stall-before-headers": [Rule(Kind.STALL, phase="response", seconds=STALL, times=1)],
    "truncate": [Rule(Kind.TRUNCATE, times=scale(1, 4))],
    "5xx": [Rule(Kind.ERROR, status=503, times=scale(1, 3)), Rule(Kind.ERROR, status=500, times=1)],
    "429": [Rule(Kind.THROTTLE, seconds=1, times=1)],
    "ignore-range": [Rule(Kind.DROP, times=1, at=MiB), Rule(Kind.IGNORE_RANGE, times=scale(1, 2))],
    "corrupt-once": [Rule(Kind.CORRUPT, times=scale(1, 3), count=scale(1, 16))],
    "lie-longer-once": [Rule(Kind.LIE_LENGTH, delta=4096, times=1)],
    "lie-shorter-once": [Rule(Kind.LIE_LENGTH, delta=-4096, times=1)],
    # A server announcing a terabyte once must not leave the download waiting for disk space.
    "lie-huge-once": [Rule(Kind.LIE_LENGTH, delta=1 << 40, times=1)],
    # Announcing more than it sends, always: each body ends early, the resume finds nothing missing
    # (416 at the full length) and the digest check passes, so the true bytes complete.
    "lie-longer-always": [Rule(Kind.LIE_LENGTH, delta=4096)],
}


# label -> what the first failed attempt says (the device's own words, from its log)
FIRST_FAILURE = {"drop": "connection lost", "stall-mid-body": "timed out", "stall-before-headers": "timed out",
                 "truncate": "connection lost", "5xx": "HTTP 503", "429": "HTTP 429", "ignore-range": "connection lost",
                 "corrupt-once": "digest mismatch", "lie-longer-once": "connection lost",
                 "lie-shorter-once": "digest mismatch", "lie-huge-once": "connection lost",
                 "lie-longer-always": "connection lost"}


@pytest.fixture(scope="module", params=range(scale(1, 4)), ids=lambda seed: f"seed{seed}")
def transient_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_http_group(tmp_path_factory.mktemp("transient"), TRANSIENT, ATTEMPTS, request.param)


def test_http_transient_faults_all_complete_and_cas_is_verified(transient_run: Run) -> None:
    assert transient_run.proc.returncode == 0, transient_run.proc.stderr[-3000:]
    assert set(cas_blobs(transient_run.data)) == {sha256_file(p) for p in transient_run.images.values()}


@pytest.mark.parametrize("label", list(TRANSIENT))
def test_http_transient_fault_is_retried_and_volume_is_exact(transient_run: Run, label: str) -> None:
    run, image = transient_run, transient_run.images[label]
    sha = sha256_file(image)
    vol, tree = by_name(run.status["volumes"], label), by_name(run.status["content_trees"], label)
    assert (vol["state"], tree["state"]) == ("CREATED_VOLUME", "LOADED"), (vol, tree)
    assert vol["error"] is None and tree["error"] is None
    assert volume_sha256(Path(vol["path"])) == sha  # the guest sees the source, byte for byte
    assert cas_blobs(run.data, {sha}) == {sha: image.stat().st_size}
    for rule in run.rules[label]:
        assert rule.injected >= 1, f"{rule.kind.value} was never injected"
    # every fault cost one failed attempt, retried after a backoff delay (or the server's Retry-After)
    failed = failed_attempts(run, sha)
    gets = run.gets(label)
    assert len(failed) == len(gets) - 1 >= 1, [(s.status, s.faults) for s in gets]
    assert all(f["retry_in"] > 0 for f in failed)
    assert FIRST_FAILURE[label] in failed[0]["error"], failed[0]["error"]
    if label == "429":
        assert failed[0]["retry_in"] == 1  # the server's Retry-After, not our backoff
    if label == "ignore-range":
        # the resume asked for the rest; the proxy stripped Range and the device took the whole body instead
        assert any(k.lower() == "range" for s in gets[1:] for k in s.headers)
    record(f"faults/http/{label}", counts={**run.counts(label), "attempts": len(gets)},
           result="completed; volume sha256 == source; CAS verified",
           details={"seed": run.proxy.seed, "image_bytes": image.stat().st_size})


# -- HTTP datastore: faults that persist end in ERROR, and nothing wrong is kept ------

PERSISTENT: dict[str, tuple[list[Rule], str]] = {
    "corrupt": ([Rule(Kind.CORRUPT)], "digest mismatch"),
    "lie-shorter": ([Rule(Kind.LIE_LENGTH, delta=-1)], "digest mismatch"),
    "truncate": ([Rule(Kind.TRUNCATE)], "connection lost"),
    "drop": ([Rule(Kind.DROP)], "connection lost"),
    "5xx": ([Rule(Kind.ERROR, status=502)], "HTTP 502"),
    "stall": ([Rule(Kind.STALL, phase="body", seconds=STALL)], "timed out"),
}


@pytest.fixture(scope="module")
def persistent_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    groups = {label: rules for label, (rules, _) in PERSISTENT.items()}
    return run_http_group(tmp_path_factory.mktemp("persistent"), groups, PERSISTENT_ATTEMPTS, 0)


def test_http_persistent_faults_leave_the_cas_empty(persistent_run: Run) -> None:
    assert persistent_run.proc.returncode == 1
    assert cas_blobs(persistent_run.data) == {}
    assert volume_files(persistent_run.data) == []


@pytest.mark.parametrize("label", list(PERSISTENT))
def test_http_persistent_fault_ends_in_error_without_volume(persistent_run: Run, label: str) -> None:
    run, message = persistent_run, PERSISTENT[label][1]
    assert run.proc.returncode == 1
    sha = sha256_file(run.images[label])
    vol, tree = by_name(run.status["volumes"], label), by_name(run.status["content_trees"], label)
    blob = next(b for b in run.status["blobs"] if b["sha256"] == sha)
    for obj in (blob, tree, vol):
        assert obj["state"] == "ERROR", obj
    desc = blob["error"]["description"]
    assert message in desc and f"gave up after {PERSISTENT_ATTEMPTS} attempts" in desc, desc
    assert message in tree["error"]["description"] and message in vol["error"]["description"]
    assert not vol["path"] and not any(p.name.startswith(vol["uuid"]) for p in volume_files(run.data))
    assert cas_blobs(run.data, {sha}) == {}  # nothing entered the store
    gets = run.gets(label)
    assert len(gets) == PERSISTENT_ATTEMPTS and all(s.faults for s in gets)  # bounded, each one faulted
    record(f"faults/http/persistent-{label}", counts={**run.counts(label), "attempts": len(gets)},
           result=f"ERROR after {len(gets)} attempts: {message}; no volume; nothing in the CAS")


# -- registry: the same faults on manifests and blobs of container images -------------

LAYER_MIB = scale(1, 6)


@dataclass
class Pushed:
    """One image per label in ``faults/<label>:v1``: a big random layer and a small one."""

    payload: bytes  # /data.bin in the big layer
    big_layer: str  # its digest
    manifest: str


def push_label_image(registry_url: str, label: str, seed: int) -> Pushed:
    payload = random.Random(f"{label}/{seed}").randbytes(LAYER_MIB * MiB)
    big = Layer.from_files({"data.bin": payload})
    small = Layer.from_files({"etc/": ("dir",), "etc/label": label.encode()}, compression="zstd")
    image = build_image([big, small], {"Cmd": ["/bin/true"]})
    push(registry_url, f"faults/{label}", "v1", image)
    return Pushed(payload, big.digest, image.digest)


def run_registry_group(root: Path, registry: RunningRegistry, groups: dict[str, list[Rule]], attempts: int,
                       seed: int) -> tuple[Run, dict[str, Pushed]]:
    """One container content tree and directory volume per label; rule paths may name {repo}, {big}, {manifest}."""
    pushed = {label: push_label_image(registry.url, label, seed) for label in groups}
    proxy = FaultProxy(registry.host, seed=seed).start()
    try:
        b = (ConfigBuilder().fast_retries(attempts)
             .item("edgevol.download.read.timeout.seconds", str(READ_TIMEOUT))
             .item("edgevol.download.parallel", str(2 * len(groups))))
        reg = b.registry(proxy.host)
        rules = {}
        for label, group in groups.items():
            p = pushed[label]
            names = {"repo": f"^/v2/faults/{label}/", "big": p.big_layer, "manifest": p.manifest}
            rules[label] = [proxy.add(replace(r, path=r.path.format(**names))) for r in group]
            ct = b.content_tree(reg, f"faults/{label}:v1", "", "container", name=label)
            b.download_volume(ct, 64 * MiB, name=label)
        data = root / "dev"
        proc = run_once(b.save(root / "config.json"), data)
        return Run(data, proc, device_status(data), proxy, {}, rules), pushed
    finally:
        proxy.stop()


REG_TRANSIENT: dict[str, list[Rule]] = {
    "drop": [Rule(Kind.DROP, "{repo}blobs/{big}", times=scale(1, 3))],
    "drop-manifest": [Rule(Kind.DROP, "{repo}manifests/", methods=frozenset({"GET"}), times=1)],
    "stall-mid-body": [Rule(Kind.STALL, "{repo}blobs/{big}", phase="body", seconds=STALL, times=1)],
    "stall-manifest": [Rule(Kind.STALL, "{repo}manifests/", phase="response", seconds=STALL, times=1)],
    "truncate": [Rule(Kind.TRUNCATE, "{repo}blobs/", times=scale(1, 3))],
    "5xx": [Rule(Kind.ERROR, "{repo}", status=503, times=scale(2, 4))],
    "429": [Rule(Kind.THROTTLE, "{repo}", seconds=1, times=1)],
    "ignore-range": [Rule(Kind.DROP, "{repo}blobs/{big}", at=MiB // 2, times=1),
                     Rule(Kind.IGNORE_RANGE, "{repo}blobs/{big}", times=1)],
    "corrupt-once": [Rule(Kind.CORRUPT, "{repo}blobs/{big}", times=scale(1, 2))],
    "corrupt-manifest-once": [Rule(Kind.CORRUPT, "{repo}manifests/", methods=frozenset({"GET"}), times=1)],
    "lie-shorter-once": [Rule(Kind.LIE_LENGTH, "{repo}blobs/{big}", delta=-4096, times=1)],
    "lie-longer-once": [Rule(Kind.LIE_LENGTH, "{repo}blobs/{big}", delta=4096, times=1)],
}


@pytest.fixture(scope="module")
def registry_transient(registry: RunningRegistry,  # noqa: F811
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Pushed]]:
    return run_registry_group(tmp_path_factory.mktemp("reg-transient"), registry, REG_TRANSIENT, ATTEMPTS, 0)


def test_registry_transient_faults_all_complete_and_cas_is_verified(registry_transient) -> None:
    run, _ = registry_transient
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    trees = {sha for t in run.status["content_trees"] for sha in t["component_sha_list"]}
    assert set(cas_blobs(run.data)) == trees


@pytest.mark.parametrize("label", list(REG_TRANSIENT))
def test_registry_transient_fault_is_retried_and_rootfs_is_exact(registry_transient, label: str) -> None:
    run, pushed = registry_transient
    p = pushed[label]
    vol, tree = by_name(run.status["volumes"], label), by_name(run.status["content_trees"], label)
    assert (vol["state"], tree["state"]) == ("CREATED_VOLUME", "LOADED"), (vol, tree)
    rootfs = Path(vol["path"]) / "rootfs"
    assert (rootfs / "data.bin").read_bytes() == p.payload and (rootfs / "etc/label").read_bytes() == label.encode()
    assert set(cas_blobs(run.data, set(tree["component_sha_list"]))) == set(tree["component_sha_list"])
    for rule in run.rules[label]:
        assert rule.injected >= 1, f"{rule.kind.value} was never injected"
    reqs = run.proxy.requests_for(rf"^/v2/faults/{label}/")
    record(f"faults/registry/{label}", counts={**run.counts(label), "requests": len(reqs)},
           result="completed; rootfs == image; CAS verified")


REG_PERSISTENT: dict[str, tuple[list[Rule], str]] = {
    "corrupt": ([Rule(Kind.CORRUPT, "{repo}blobs/{big}")], "digest mismatch"),
    "corrupt-manifest": ([Rule(Kind.CORRUPT, "{repo}manifests/", methods=frozenset({"GET"}))],
                         "manifest content has digest"),
    "lie-longer": ([Rule(Kind.LIE_LENGTH, "{repo}blobs/{big}", delta=4096)], "server announces"),
    "5xx": ([Rule(Kind.ERROR, "{repo}blobs/{big}", status=500)], "HTTP 500"),
}


@pytest.fixture(scope="module")
def registry_persistent(registry: RunningRegistry,  # noqa: F811
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Pushed]]:
    groups = {label: rules for label, (rules, _) in REG_PERSISTENT.items()}
    return run_registry_group(tmp_path_factory.mktemp("reg-persistent"), registry, groups, PERSISTENT_ATTEMPTS, 1)


def test_registry_persistent_faults_keep_only_verified_blobs(registry_persistent) -> None:
    run, _ = registry_persistent
    assert run.proc.returncode == 1
    cas_blobs(run.data)  # what did get in (manifests, config, small layers) hashes to its name
    assert volume_files(run.data) == []


@pytest.mark.parametrize("label", list(REG_PERSISTENT))
def test_registry_persistent_fault_ends_in_error_without_volume(registry_persistent, label: str) -> None:
    run, pushed = registry_persistent
    message = REG_PERSISTENT[label][1]
    assert run.proc.returncode == 1
    vol, tree = by_name(run.status["volumes"], label), by_name(run.status["content_trees"], label)
    assert (vol["state"], tree["state"]) == ("ERROR", "ERROR"), (vol, tree)
    desc = tree["error"]["description"]
    assert message in desc and f"gave up after {PERSISTENT_ATTEMPTS} attempts" in desc, desc
    assert message in vol["error"]["description"]
    assert not vol["path"] and not any(p.name.startswith(vol["uuid"]) for p in volume_files(run.data))
    faulted = (pushed[label].manifest if "manifest" in label else pushed[label].big_layer).removeprefix("sha256:")
    assert cas_blobs(run.data, {faulted}) == {}  # the faulted blob never got in
    hits = [s for s in run.proxy.requests_for(rf"^/v2/faults/{label}/") if s.faults]
    assert len(hits) == PERSISTENT_ATTEMPTS  # bounded
    record(f"faults/registry/persistent-{label}", counts={**run.counts(label), "attempts": len(hits)},
           result=f"ERROR after {len(hits)} attempts: {message}; no volume; nothing wrong in the CAS")


def test_registry_without_digest_header_survives_a_corrupted_tag_answer(
        registry: RunningRegistry, proxies: Callable[..., FaultProxy], tmp_path: Path) -> None:  # noqa: F811
    """A registry that sends no Docker-Content-Digest makes the device hash the tag's GET body.

    One damaged byte in that answer names a manifest that does not exist. The
    device must not latch that digest: it retries, resolves the tag again and
    pulls the real image (no corrupted byte reaches a volume either way).
    """
    pushed = push_label_image(registry.url, "no-digest-header", seed=2)
    proxy = proxies(registry.host, seed=2)
    proxy.strip_headers = {"docker-content-digest"}
    rule = proxy.add(Rule(Kind.CORRUPT, r"^/v2/faults/no-digest-header/manifests/v1$", methods=frozenset({"GET"}),
                          times=1))
    b = ConfigBuilder().fast_retries(ATTEMPTS).item("edgevol.download.read.timeout.seconds", str(READ_TIMEOUT))
    ct = b.content_tree(b.registry(proxy.host), "faults/no-digest-header:v1", "", "container", name="nd")
    b.download_volume(ct, 64 * MiB, name="nd")
    data = tmp_path / "dev"
    proc = run_once(b.save(tmp_path / "config.json"), data)
    assert rule.injected == 1, "the tag's GET answer was never corrupted"
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    tree, vol = by_name(st["content_trees"], "nd"), by_name(st["volumes"], "nd")
    assert (tree["state"], vol["state"]) == ("LOADED", "CREATED_VOLUME"), (tree, vol)
    assert tree["sha256"] == pushed.manifest.removeprefix("sha256:")
    assert (Path(vol["path"]) / "rootfs" / "data.bin").read_bytes() == pushed.payload
    tag_gets = proxy.requests_for(r"/manifests/v1$", "GET")
    assert len(tag_gets) == 2, [s.path for s in tag_gets]  # resolved again after the damaged answer
    record("faults/registry/no-digest-header-corrupt-tag", counts={"corrupt": rule.injected,
                                                                    "tag_gets": len(tag_gets)},
           result="tag resolved again; rootfs == image; CAS verified")


# -- controller: faults on config, info and metrics lose nothing ------------------------

CONTROLLER_STALL = 2.0  # under the device's 15 s controller timeout: a slow controller
HUNG_METRICS = 16.0  # over it: a hung metrics call must not hold up config or info

CONTROLLER_RULES = [
    Rule(Kind.ERROR, r"/register$", status=503, times=1),
    Rule(Kind.DROP, r"/certs$", times=1),
    Rule(Kind.DROP, r"/uuid$", times=1),  # onboarding's later steps fail once each too
    Rule(Kind.ERROR, r"/attest$", status=503, times=1),
    Rule(Kind.ERROR, r"/config$", status=502, every=3),
    # mid-body, after the controller answered; only a 200 (a new config) has a body to cut, and the quick
    # profile makes about three of them, so every second one
    Rule(Kind.DROP, r"/config$", every=2),
    Rule(Kind.STALL, r"/config$", phase="request", seconds=CONTROLLER_STALL, every=5, times=scale(2, 6)),
    Rule(Kind.ERROR, r"/info$", status=503, every=3),
    Rule(Kind.DROP, r"/info$", every=4),  # the controller stored it; the device never hears back
    Rule(Kind.STALL, r"/info$", phase="response", seconds=CONTROLLER_STALL, every=5, times=scale(2, 6)),
    Rule(Kind.STALL, r"/metrics$", phase="response", seconds=HUNG_METRICS, times=1),  # the first one hangs
    Rule(Kind.ERROR, r"/metrics$", status=500, every=3),
    Rule(Kind.DROP, r"/metrics$", every=2),
]


def test_controller_faults_lose_nothing(controller_factory, agent_factory, datastore_dir: Path,  # noqa: F811
                                        http_server, proxies) -> None:
    ctrl = controller_factory()
    proxy = proxies(ctrl.url.removeprefix("http://"), seed=7)
    rules = [proxy.add(replace(r)) for r in CONTROLLER_RULES]
    agent = agent_factory(replace(ctrl, port=proxy.port), "dev1")  # the device talks to the proxy only
    onboard(ctrl, agent, "dev1")
    raw = make_raw_image(datastore_dir / "disk.raw", 4)
    ctrl.admin("POST", "/datastores", json={"name": "local", "type": "DsHttp", "fqdn": http_server.url})
    ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": "disk", "datastore": "local", "url": "disk.raw",
                                                            "format": "RAW", "sha256": sha256_file(raw)})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "root", "origin": "download", "content_tree": "disk",
                                                      "max_size_bytes": 8 * MiB})
    agent.start()

    def converged(names: set[str]) -> Any:
        if not (agent.data_dir / "state.db").exists():
            return None
        dev = device_view(agent)
        vols = {v["display_name"]: v["state"] for v in agent.status()["volumes"]}
        if vols != {n: "CREATED_VOLUME" for n in names}:
            return None
        return dev if controller_view(ctrl, "dev1") == dev else None

    names = {"root"}
    view = wait_for(lambda: converged(names), 90, "device done and the controller told all of it")
    rounds = scale(2, 8)
    for i in range(rounds):  # config changes while faults go on: add one volume, remove the previous one
        ctrl.admin("POST", "/devices/dev1/volumes", json={"name": f"data{i}", "origin": "blank",
                                                          "max_size_bytes": 16 * MiB})
        if i:
            ctrl.admin("DELETE", f"/devices/dev1/volumes/data{i - 1}")
            names.discard(f"data{i - 1}")
        names.add(f"data{i}")
        view = wait_for(lambda: converged(names), 90, f"round {i}: device and controller agree")
    assert {k[0] for k in view} == {"volume", "content_tree", "blob"} and len(view) == 4
    root = next(v for v in agent.status()["volumes"] if v["display_name"] == "root")
    guest = guest_bytes(Path(root["path"]))  # the source, then zeros up to maxsizebytes
    assert guest[:4 * MiB] == raw.read_bytes() and guest[4 * MiB:] == bytes(4 * MiB)

    # metrics got through too, and a hung metrics call held up neither config polls nor info
    vol_uuid = root["uuid"]
    wait_for(lambda: ctrl.admin("GET", f"/devices/dev1/volumes/{vol_uuid}/metrics"), 30, "metrics delivered")
    hung = wait_for(lambda: [s for s in proxy.requests_for(r"/metrics$") if "stall" in s.faults
                             and s.ended is not None], HUNG_METRICS + 10, "the hung metrics call to end")[0]
    during = [s for s in proxy.requests_for(r"/(config|info)$") if s.ended is not None
              and hung.started < s.started and s.ended < hung.ended and s.status == 200]
    assert during, "no config poll or info post completed while a metrics call hung"
    missing = lambda: [f"{r.kind.value} on {r.path}" for r in rules if not r.injected]  # noqa: E731
    try:
        wait_for(lambda: not missing(), 30, "every rule to be injected at least once")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; never injected: {missing()}") from None
    wait_for(lambda: controller_view(ctrl, "dev1") == device_view(agent), 30, "device and controller agree")
    by_path = Counter(s.path.rsplit("/", 1)[-1] for s in proxy.requests)
    record("faults/controller", counts={**proxy.counts(), **{f"requests_{k}": v for k, v in by_path.items()}},
           result=f"controller view == device status after {rounds + 1} config changes; metrics delivered",
           details={"served_during_hung_metrics": len(during)})
