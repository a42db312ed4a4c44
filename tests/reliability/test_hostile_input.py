"""Hostile input: configs, registries and layers built to crash the device or escape it.

Three families, each recorded as scenarios with their figures:

* config bytes and config objects, fuzzed with hypothesis (derandomized, so a
  CI failure reproduces): decoding only ever yields a config or a
  ``ConfigDecodeError``; parsing never raises, gives every planted invalid
  object its own error and leaves the valid objects exactly as they parse
  without the hostile ones; an in-process agent fed a sample of these configs
  settles with every object in a state row, and ``config validate`` answers
  with 0 or 1, never a traceback;
* hostile registries: a real docker-registry for what it agrees to store, and
  a loopback stand-in (:class:`FakeDistribution`) for what it refuses; every
  hostile image ends in a clear ERROR naming the cause while a good image and
  a blank volume in the same config complete;
* fuzzed tar headers unpacked with ``unpack_layers`` beside a sentinel
  directory: nothing outside the rootfs changes and the only error is
  ``UnpackError``. (Hand-made hostile entries are in tests/test_rootfs.py and
  tests/test_device_containers.py; this adds generated ones.)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from click.testing import CliRunner
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from edgevol.api import messages as m
from edgevol.api.codec import ConfigDecodeError, decode_edge_dev_config, load_edge_dev_config
from edgevol.cli.main import main as cli_main
from edgevol.cli.output import print_status_tables
from edgevol.device.datastores.oci_manifest import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
    host_platform,
)
from edgevol.device.datastores.oci_refs import is_loopback_host, split_registry_address
from edgevol.device.datastores.registry import RegistryClient
from edgevol.device.reconcile.agent import Agent, AgentOptions
from edgevol.device.report.status import status_document
from edgevol.device.volumes.files import parse_name
from edgevol.device.volumes.rootfs import UnpackError, UnpackLimits, UnpackState, unpack_layers
from edgevol.model.desired import DatastoreKind, DesiredState, ObjectKind
from edgevol.model.parse import MAX_REASONABLE_SIZE, parse_config
from edgevol.tools.oci_image import Image, Layer, build_image, build_index, compress, push, push_blob, sha256_digest
from tests.conftest import run_cli
from tests.configs import ConfigBuilder
from tests.registry_fixture import RunningRegistry, free_port, registry  # noqa: F401  (fixture)
from tests.reliability import strategies as hs
from tests.reliability.figures import record, scale

K = ObjectKind
S = m.ZSwState
MiB = 1 << 20

FUZZ = settings(
    max_examples=scale(200, 5000),
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                           HealthCheck.function_scoped_fixture],
)
FAST_RETRIES = (("edgevol.download.max.attempts", "2"), ("edgevol.download.retry.base.seconds", "0.02"),
                ("edgevol.download.retry.cap.seconds", "0.05"), ("edgevol.download.parallel", "4"))
SETTLE_SECONDS = 60.0  # a bound against hanging, far above what settling takes
FUZZ_TIMEOUT = pytest.mark.timeout(scale(300, 3600))  # the long profile's 5000 examples take minutes


# -- figures --------------------------------------------------------------------------


@contextlib.contextmanager
def scenario(name: str) -> Iterator[Counter[str]]:
    """Count what a scenario did and record it, pass or fail; ``crashes`` is always present."""
    counts: Counter[str] = Counter()
    started = time.monotonic()
    result = "pass"
    try:
        yield counts
    except BaseException as exc:
        result = f"FAIL: {type(exc).__name__}"
        raise
    finally:
        counts.setdefault("crashes", 0)
        record(name, counts=dict(counts), result=result,
               details={"seconds": round(time.monotonic() - started, 1)})


@contextlib.contextmanager
def crash_counted(counts: Counter[str]) -> Iterator[None]:
    """Any exception escaping here is a crash: count it and let hypothesis shrink it."""
    try:
        yield
    except AssertionError:
        raise
    except Exception:
        counts["crashes"] += 1
        raise


# -- 1a: config bytes -------------------------------------------------------------------


@FUZZ_TIMEOUT
def test_hostile_config_bytes_decode_to_a_config_or_a_decode_error() -> None:
    with scenario("hostile/config-bytes (random, mutated binary and JSON)") as counts:

        @FUZZ
        @given(hs.config_bytes())
        def check(made: tuple[str, bytes]) -> None:
            how, data = made
            counts["inputs"] += 1
            for fmt in ("auto", "binary", "json"):
                counts["decodings"] += 1  # each input is decoded three ways: decoded + decode_errors
                with crash_counted(counts):
                    try:
                        cfg = decode_edge_dev_config(data, fmt, source="fuzz.cfg")  # type: ignore[arg-type]
                    except ConfigDecodeError as exc:
                        assert str(exc).startswith("fuzz.cfg: "), exc
                        counts["decode_errors"] += 1
                        continue
                    assert isinstance(cfg, m.EdgeDevConfig)
                    counts["decoded"] += 1
                    state = parse_config(cfg)  # whatever decodes must also parse
                counts["object_errors"] += len(state.errors)

        check()
        assert counts["decoded"] and counts["decode_errors"]  # both outcomes were exercised


# -- 1b: hostile objects through the parser ------------------------------------------------


def _sections(state: DesiredState) -> dict[ObjectKind, dict[str, Any]]:
    return {K.DATASTORE: state.datastores, K.CONTENT_TREE: state.content_trees, K.VOLUME: state.volumes,
            K.APP: state.apps}


def check_parse(plan: hs.Plan, state: DesiredState, base: DesiredState) -> None:
    """The parser's contract on one hostile config (see the module docstring)."""
    sections = _sections(state)
    # References only ever point at valid objects.
    for ct in state.content_trees.values():
        assert ct.datastore_id in state.datastores, ct
    for v in state.volumes.values():
        assert (v.content_tree_id is None) == (v.origin.value == "blank"), v
        assert v.content_tree_id is None or v.content_tree_id in state.content_trees, v
        assert 0 <= v.max_size_bytes <= MAX_REASONABLE_SIZE and 0 <= v.generation <= MAX_REASONABLE_SIZE, v
    for app in state.apps.values():
        for ref in app.volume_refs:
            assert ref.uuid in state.volumes, (app, ref)
    # An error's object is never also valid; every error says something.
    for e in state.errors:
        assert isinstance(e.message, str) and e.message, e
        if e.kind in sections:
            assert e.object_id not in sections[e.kind], e
    # Every object of the config is either valid or has an error of its own.
    for kind, ident in plan.objects:
        assert ident in sections[kind] or state.errors_for(kind, ident), (kind, ident)
    for key in plan.must_fail:
        assert state.errors_for(*key), f"planted invalid {key} got no error"
    for item in plan.bad_items:
        assert state.errors_for(K.CONFIG_ITEM, item), f"config item {item} was not refused"
    # Nothing appears from nowhere: implicit volumes and trees belong to valid drives-only apps.
    explicit_vols = {hs.canon(v.uuid) for v in plan.cfg.volumes}
    explicit_trees = {hs.canon(c.uuid) for c in plan.cfg.contentInfo}
    for v in state.volumes.values():
        assert v.uuid in explicit_vols or (v.implicit and v.app_uuid in state.apps), v
    for ct in state.content_trees.values():
        assert ct.uuid in explicit_trees or any(
            v.content_tree_id == ct.uuid and v.implicit for v in state.volumes.values()), ct
    # The valid objects come out exactly as without the hostile ones, unless a planted
    # duplicate (or a conflicting drive) legitimately took them down with it.
    base_sections = _sections(base)
    for kind, ident in plan.base:
        if (kind, ident) in plan.tainted:  # may fall (then with an error), or stay as it was
            assert (ident not in sections[kind] and state.errors_for(kind, ident)) or (
                sections[kind].get(ident) == base_sections[kind][ident]), (kind, ident)
            continue
        assert sections[kind].get(ident) == base_sections[kind][ident], (kind, ident)
        if kind is K.APP:
            for ref in base.apps[ident].volume_refs:
                vol = base.volumes[ref.uuid]
                assert state.volumes.get(vol.uuid) == vol
                if vol.content_tree_id:
                    assert state.content_trees.get(vol.content_tree_id) == base.content_trees[vol.content_tree_id]
    s = state.settings
    assert 1 <= s.download_max_attempts <= 100 and 1 <= s.parallel_downloads <= 64
    assert 0 <= s.retry_base_seconds <= 3600 and 0 <= s.retry_cap_seconds <= 86400
    assert 0 <= s.disk_reserve_bytes <= MAX_REASONABLE_SIZE


@FUZZ_TIMEOUT
def test_hostile_objects_get_their_own_errors_and_leave_valid_objects_alone() -> None:
    with scenario("hostile/config-objects through parse_config") as counts:

        @FUZZ
        @given(hs.hostile_plans(wild_hosts=True))
        def check(plan: hs.Plan) -> None:
            base = parse_config(plan.base_cfg)
            assert base.errors == [], f"strategy bug: the base config is not valid: {base.errors}"
            with crash_counted(counts):
                state = parse_config(plan.cfg)
            check_parse(plan, state, base)
            counts["configs"] += 1
            counts["objects"] += len(plan.objects)
            counts["planted"] += len(plan.planted)
            counts["planted_must_fail"] += len(plan.must_fail)
            counts["object_errors"] += len(state.errors)
            counts["valid_objects_checked_unchanged"] += len(plan.base - plan.tainted)

        check()
        assert counts["planted_must_fail"] and counts["valid_objects_checked_unchanged"]


# -- 1c: the agent on hostile configs ----------------------------------------------------------


def _is_uuid_shaped(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


def settle(agent: Agent, logs: list[dict[str, Any]]) -> int:
    """Step until the agent (``once``) has converged; returns the number of steps."""
    deadline = time.monotonic() + SETTLE_SECONDS
    steps = 0
    while True:
        agent.step()
        steps += 1
        if agent.converged():
            agent.step()
            steps += 1
            if agent.converged():
                return steps
        if time.monotonic() > deadline:
            stuck = [(t, r.get("display_name"), S.Name(r["state"])) for t in ("volumes", "content_trees", "blobs")
                     for r in agent.store.all(t) if r["state"] not in (S.LOADED, S.CREATED_VOLUME, S.ERROR)]
            crashed = [e for e in logs if e.get("event") == "task crashed"]
            raise AssertionError(f"the agent did not settle in {SETTLE_SECONDS:.0f}s: stuck {stuck}; {crashed}")
        agent.wake.wait(0.05)
        agent.wake.clear()


def _loopback_only(state: DesiredState, host: str) -> bool:
    """Every valid datastore this agent could contact is ``host`` on loopback (or refuses to start)."""
    for ds in state.datastores.values():
        if ds.kind is DatastoreKind.CONTAINER_REGISTRY:
            _scheme, netloc, _path = split_registry_address(ds.fqdn)
        elif ds.kind in (DatastoreKind.HTTP, DatastoreKind.HTTPS):
            text = ds.fqdn.strip()
            netloc = (text.split("://", 1)[1] if "://" in text else text).split("/", 1)[0]
        else:
            continue
        try:
            hostname = httpx.URL(f"http://{netloc}/").host
        except (httpx.InvalidURL, ValueError):
            continue  # no client can be made for it: the agent fails the datastore's content
        if not is_loopback_host(hostname):
            return False
    return True


def check_agent_state(agent: Agent, desired: DesiredState, data: Path) -> dict[str, Any]:
    store = agent.store
    for v in desired.volumes.values():
        row = store.get("volumes", v.uuid, v.generation)
        assert row is not None, f"volume {v.uuid}#{v.generation} has no state row"
        assert row["state"] in (S.CREATED_VOLUME, S.ERROR), row
        if row["state"] == S.ERROR:
            assert row["error"] and row["error"]["description"], row
        else:
            assert row["path"] and Path(row["path"]).exists(), row
    for ct in desired.content_trees.values():
        row = store.get("content_trees", ct.uuid)
        assert row is not None and row["state"] in (S.LOADED, S.ERROR), (ct, row)
    for app in desired.apps.values():
        assert store.get("apps", app.uuid) is not None, app
    for e in desired.errors:
        if e.kind is K.VOLUME and _is_uuid_shaped(e.object_id):
            rows = [r for r in store.all("volumes") if r["uuid"] == e.object_id]
            assert rows and all(r["state"] == S.ERROR for r in rows), e
        if e.kind is K.CONTENT_TREE and _is_uuid_shaped(e.object_id):
            row = store.get("content_trees", e.object_id)
            assert row is not None and row["state"] == S.ERROR, e
    # On disk, only volumes the config wants and the agent reports created.
    for entry in os.listdir(data / "volumes"):
        parsed = parse_name(entry.replace(".container", ".raw"))
        assert parsed is not None, f"stray entry {entry} in volumes/"
        row = store.get("volumes", parsed[0], parsed[1])
        assert row is not None and row["state"] == S.CREATED_VOLUME and row["path"].endswith(entry), entry
    doc = status_document(store)
    json.dumps(doc)
    print_status_tables(Console(file=io.StringIO(), width=200), doc)  # hostile names in tables
    return doc


@FUZZ_TIMEOUT
def test_agent_settles_on_hostile_configs_without_a_crash(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens: every download fails fast
    with scenario("hostile/configs through a running agent") as counts, \
            structlog.testing.capture_logs() as logs:

        @settings(FUZZ, max_examples=scale(12, 150))
        @given(hs.hostile_plans(host, wild_hosts=False, max_planted=6))
        def check(plan: hs.Plan) -> None:
            cfg = copy.deepcopy(plan.cfg)
            for key, value in FAST_RETRIES:  # the last value wins over planted ones
                cfg.configItems.add(key=key, value=value)
            desired = parse_config(cfg)
            assert _loopback_only(desired, host), "strategy bug: a valid datastore leaves loopback"
            data = Path(tempfile.mkdtemp(dir=tmp_path))
            seen = len(logs)
            agent = Agent(data, AgentOptions(once=True))
            try:
                with crash_counted(counts):
                    agent.set_desired(desired)
                    counts["steps"] += settle(agent, logs[seen:])
                    doc = check_agent_state(agent, desired, data)
                    agent.has_errors()
            finally:
                agent.close()
            crashed = [e for e in logs[seen:] if e.get("event") == "task crashed"]
            assert not crashed, crashed
            counts["configs"] += 1
            counts["objects_in_config"] += len(plan.objects)
            counts["volumes_created"] += sum(v["state"] == "CREATED_VOLUME" for v in doc["volumes"])
            counts["rows_in_error"] += sum(r["state"] == "ERROR" for t in ("volumes", "content_trees", "blobs")
                                           for r in doc[t])
            counts["config_errors"] += len(doc["config_errors"])
            shutil.rmtree(data)

        check()
        assert counts["volumes_created"] and counts["rows_in_error"]


# -- 1d: config validate on mutated JSON ------------------------------------------------------


def _expected_validate(path: Path) -> tuple[int, DesiredState | None]:
    try:
        cfg = load_edge_dev_config(path, ignore_unknown_json_fields=True)
    except ConfigDecodeError:
        return 1, None
    state = parse_config(cfg)
    return (1 if state.errors else 0), state


@FUZZ_TIMEOUT
def test_config_validate_answers_mutated_json_without_a_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    with scenario("hostile/edgevol config validate on mutated JSON") as counts:

        @settings(FUZZ, max_examples=scale(100, 2000))
        @given(st.tuples(hs.hostile_plans(wild_hosts=True, max_planted=4), st.booleans()).flatmap(
            lambda pb: hs.mutated_json(json_format.MessageToDict(pb[0].base_cfg if pb[1] else pb[0].cfg))),
            st.sampled_from(["json", "table"]))
        def check(doc: Any, output: str) -> None:
            path = tmp_path / "config.json"
            path.write_bytes(hs.json_text(doc))
            expected, state = _expected_validate(path)
            result = runner.invoke(cli_main, ["config", "validate", str(path), "-o", output])
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                counts["crashes"] += 1
                raise result.exception
            assert result.exit_code == expected, result.output
            assert "Traceback" not in result.output
            counts["inputs"] += 1
            if state is None:
                assert "Error: " in result.output and str(path) in result.output
                counts["undecodable"] += 1
                return
            counts["exit_1" if expected else "exit_0"] += 1
            if output == "json":
                summary = json.loads(result.stdout)
                assert len(summary["errors"]) == len(state.errors)
                assert summary["volumes"] == len(state.volumes) and summary["apps"] == len(state.apps)

        check()
        assert counts["undecodable"] and counts["exit_1"] and counts["exit_0"]


_UNREADABLE = {
    "empty.json": (b"", 1),
    "garbage.json": (b"\xff\xfe\x00garbage", 1),
    "deep.json": (b"[" * 200_000, 1),
    "deep.pb": (b"\x22\x02" * 60_000, 1),
    "missing.json": (None, 1),
    "a-directory": ("dir", 2),  # click refuses it as a usage error
    "markup.json": (json.dumps({"contentInfo": [{"uuid": "[/x]", "displayName": "[bold]x"}]}).encode(), 1),
}


@pytest.mark.parametrize("name", list(_UNREADABLE))
def test_config_validate_refuses_unreadable_files_cleanly(tmp_path: Path, name: str) -> None:
    """The real command line (a subprocess): an error message and exit 1, or usage (2), never a traceback."""
    content, code = _UNREADABLE[name]
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    proc = run_cli("config", "validate", str(path))
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    if name == "markup.json":
        assert "[/x]" in proc.stdout and "INVALID OBJECTS" in proc.stdout
    else:
        assert "Error" in proc.stderr


# -- 2: hostile registries ----------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] | None = None
    body: bytes = b""
    chunked: bool = False  # no Content-Length: the body streams until the last chunk


class FakeDistribution(ThreadingHTTPServer):
    """A loopback stand-in for a registry, for what the real one refuses to store.

    It speaks just enough of the OCI distribution API v2 (``GET /v2/``, HEAD and
    GET of ``/v2/<repo>/manifests/<tag|digest>`` and GET of
    ``/v2/<repo>/blobs/<digest>``) to serve a fixed table of answers: an index
    that claims to be its own child, a manifest over the 4 MiB limit (with and
    without Content-Length), bodies whose Content-Type lies, and blob bytes
    that do not match their digest. Anything else is a registry-style 404.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.routes: dict[str, Route] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def manifest(self, repo: str, ref: str, body: bytes, content_type: str, *, head_digest: str | None = None,
                 chunked: bool = False) -> None:
        """Serve ``body`` for a tag or digest; HEAD announces ``head_digest`` (default: the true one)."""
        headers = {"Content-Type": content_type, "Docker-Content-Digest": head_digest or sha256_digest(body)}
        self.routes[f"/v2/{repo}/manifests/{ref}"] = Route(200, headers, body, chunked)

    def blob(self, repo: str, digest: str, body: bytes) -> None:
        self.routes[f"/v2/{repo}/blobs/{digest}"] = Route(200, {"Content-Type": "application/octet-stream"}, body)

    def image(self, repo: str, image: Image, *, tag: str = "v1") -> None:
        self.manifest(repo, tag, image.manifest, image.media_type)
        self.manifest(repo, image.digest, image.manifest, image.media_type)
        for digest, blob in image.blobs.items():
            assert isinstance(blob, bytes)
            self.blob(repo, digest, blob)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeDistribution

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        route = Route(200, {"Content-Type": "application/json"}, b"{}") if path == "/v2/" else (
            self.server.routes.get(path) or Route(404, {"Content-Type": "application/json"},
                                                  b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'))
        self.send_response(route.status)
        for key, value in (route.headers or {}).items():
            self.send_header(key, value)
        if route.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        if head:
            return
        try:
            if not route.chunked:
                self.wfile.write(route.body)
                return
            for i in range(0, len(route.body), 1 << 16):
                part = route.body[i:i + (1 << 16)]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up reading: that is the point


def _platform() -> dict[str, str]:
    os_name, arch, variant = host_platform()
    return {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _own_image(tag: str, **kwargs: Any) -> Image:
    """An image whose layer is its own (no blob shared with another image in the config)."""
    os_name, arch, variant = host_platform()
    return build_image([Layer.from_files({f"{tag}/file": tag.encode() * 3})], arch=arch, os=os_name,
                       variant=variant, **kwargs)


def _with_manifest(image: Image, change: Any) -> Image:
    doc = json.loads(image.manifest)
    change(doc)
    return Image(_canonical(doc), image.media_type, image.blobs, image.config, image.platform)


def _put_manifest(reg: RunningRegistry, repo: str, ref: str, body: bytes, media_type: str) -> None:
    with RegistryClient(reg.host, "http") as client:
        resp = client.request("PUT", repo, f"/v2/{repo}/manifests/{ref}", push=True, content=body,
                              headers={"Content-Type": media_type})
        assert resp.status_code == 201, (repo, ref, resp.status_code, resp.text)


def _push_blobs(reg: RunningRegistry, repo: str, image: Image) -> None:
    with RegistryClient(reg.host, "http") as client:
        for digest, blob in image.blobs.items():
            push_blob(client, repo, digest, blob)


@dataclass
class Hostile:
    """One hostile image: where its error must land, and words the description must contain."""

    where: str  # "tree": the content tree fails (and its volume mirrors it); "volume": only the volume
    phrases: tuple[str, ...]
    max_size: int = 0


def _real_registry_hostiles(reg: RunningRegistry) -> dict[str, Hostile]:
    """Hostile images the real docker-registry accepts; pushed under hostile/<name>:v1."""
    out: dict[str, Hostile] = {}

    def store(name: str, image: Image, hostile: Hostile) -> None:
        _push_blobs(reg, f"hostile/{name}", image)
        _put_manifest(reg, f"hostile/{name}", "v1", image.manifest, image.media_type)
        out[name] = hostile

    def layer0(key: str, value: Any) -> Any:
        return lambda doc: doc["layers"][0].__setitem__(key, value)

    store("unknown-layer-type", _with_manifest(_own_image("ult"), layer0("mediaType", "application/x-evil")),
          Hostile("tree", ("layer 0", "unsupported media type 'application/x-evil'")))
    store("helm-config", _with_manifest(_own_image("helm"), lambda d: d["config"].__setitem__(
        "mediaType", "application/vnd.cncf.helm.config.v1+json")), Hostile("tree", ("not a container image",)))
    img = _own_image("bigger")
    store("layer-size-bigger", _with_manifest(img, layer0("size", json.loads(img.manifest)["layers"][0]["size"] + 7)),
          Hostile("tree", ("server announces", "for content of", "gave up after 2 attempts")))
    img = _own_image("smaller")
    store("layer-size-smaller", _with_manifest(img, layer0("size", json.loads(img.manifest)["layers"][0]["size"] - 7)),
          Hostile("tree", ("server announces", "for content of")))
    store("layer-size-huge", _with_manifest(_own_image("huge"), layer0("size", 1 << 40)),
          Hostile("tree", ("not enough disk space", "need 1.0 TiB")))
    store("over-max-size", _own_image("overmax"), Hostile("tree", ("more than maxSizeBytes 100",), max_size=100))
    cfg_binary = _own_image("cfgbin")
    bad_config = b"\xff\xfe\x00 not json"
    doc = json.loads(cfg_binary.manifest)
    old = doc["config"]["digest"]
    doc["config"].update(digest=sha256_digest(bad_config), size=len(bad_config))
    blobs = {d: b for d, b in cfg_binary.blobs.items() if d != old} | {sha256_digest(bad_config): bad_config}
    store("config-binary", Image(_canonical(doc), cfg_binary.media_type, blobs),
          Hostile("volume", ("image config is not valid JSON",)))
    # Found by the tar fuzz below: a pax header tarfile cannot parse (it raised ValueError, which
    # crashed the volume's task and left it in CREATING_VOLUME, re-crashing every 10 s).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sparse-file")
        info.pax_headers = {"GNU.sparse.map": "nan"}
        tar.addfile(info, io.BytesIO(b""))
    os_name, arch, variant = host_platform()
    store("pax-sparse-map-nan", build_image([Layer.from_tar(buf.getvalue())], arch=arch, os=os_name,
                                            variant=variant),
          Hostile("volume", ("corrupt or truncated archive", "invalid literal")))
    # A chain of indexes: index -> index -> index -> image. The device follows one level only.
    inner = _own_image("chain")
    repo = "hostile/index-chain"
    _push_blobs(reg, repo, inner)
    _put_manifest(reg, repo, inner.digest, inner.manifest, inner.media_type)
    child, child_type = inner.manifest, inner.media_type
    for _level in range(3):
        entry = {"mediaType": child_type, "digest": sha256_digest(child), "size": len(child), "platform": _platform()}
        child, child_type = _canonical({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [entry]}), (
            MEDIA_OCI_INDEX)
        _put_manifest(reg, repo, sha256_digest(child), child, MEDIA_OCI_INDEX)
    _put_manifest(reg, repo, "v1", child, MEDIA_OCI_INDEX)
    out["index-chain"] = Hostile("tree", ("image has no manifest for platform",))
    # An index whose entry claims to be an image manifest but is another index.
    repo = "hostile/index-posing-as-manifest"
    _push_blobs(reg, repo, inner)
    _put_manifest(reg, repo, inner.digest, inner.manifest, inner.media_type)
    mid = build_index([inner])
    _put_manifest(reg, repo, mid.digest, mid.manifest, mid.media_type)
    top = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [
        {"mediaType": MEDIA_OCI_MANIFEST, "digest": mid.digest, "size": mid.size, "platform": _platform()}]}
    _put_manifest(reg, repo, "v1", _canonical(top), MEDIA_OCI_INDEX)
    out["index-posing-as-manifest"] = Hostile("tree", ("expected an image manifest but got an image index",))
    return out


def _fake_registry_hostiles(fake: FakeDistribution) -> dict[str, Hostile]:
    """Hostile answers the real registry refuses to store; served under hostile/<name>:v1."""
    out: dict[str, Hostile] = {}
    image = _own_image("fake-base")

    # An index listing itself. Content addressing makes that impossible for an honest registry
    # (a body cannot contain its own hash), so this one lies: it claims digest D is the index.
    claimed = "sha256:" + hashlib.sha256(b"the index itself").hexdigest()
    index = _canonical({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [
        {"mediaType": MEDIA_OCI_MANIFEST, "digest": claimed, "size": 1, "platform": _platform()}]})
    for ref in ("v1", sha256_digest(index), claimed):
        fake.manifest("hostile/self-index", ref, index, MEDIA_OCI_INDEX)
    out["self-index"] = Hostile("tree", ("manifest content has digest", claimed))
    # ... and the same index when the tag's HEAD already claims the lie.
    fake.manifest("hostile/self-index-head", "v1", index, MEDIA_OCI_INDEX, head_digest=claimed)
    fake.manifest("hostile/self-index-head", claimed, index, MEDIA_OCI_INDEX)
    out["self-index-head"] = Hostile("tree", ("manifest content has digest", claimed))
    # Manifests bigger than the 4 MiB limit, announced or streamed.
    huge = _canonical(json.loads(image.manifest) | {"annotations": {"pad": "x" * (5 << 20)}})
    for name, chunked, phrase in (("huge-manifest", False, "more than the 4194304 allowed"),
                                  ("huge-manifest-chunked", True, "larger than the 4194304 bytes allowed")):
        fake.manifest(f"hostile/{name}", "v1", huge, MEDIA_OCI_MANIFEST, chunked=chunked)
        fake.manifest(f"hostile/{name}", sha256_digest(huge), huge, MEDIA_OCI_MANIFEST, chunked=chunked)
        out[name] = Hostile("tree", (phrase,))

    # Content-Type that does not match the body.
    def lying(name: str, body: bytes, content_type: str, *phrases: str) -> None:
        fake.manifest(f"hostile/{name}", "v1", body, content_type)
        fake.manifest(f"hostile/{name}", sha256_digest(body), body, content_type)
        out[name] = Hostile("tree", phrases)

    # Each its own image: the device keeps a manifest's media type with its digest.
    lying("manifest-served-as-index", _own_image("as-index").manifest, MEDIA_OCI_INDEX,
          "image index declares media type")
    lying("oci-served-as-docker", _own_image("as-docker").manifest, MEDIA_DOCKER_MANIFEST, "but was served as")
    lying("html-manifest", b"<html><body>login</body></html>", "text/html", "unsupported manifest type 'text/html'")
    lying("unknown-type", b'{"hello": "world"}', "application/vnd.example.thing+json", "unsupported manifest type")
    lying("schema1", _canonical({"schemaVersion": 1, "name": "x", "fsLayers": []}), MEDIA_DOCKER_MANIFEST,
          "schemaVersion 1")
    # Blob bytes that do not match the descriptor's digest (same length, so only the hash tells).
    bad = _own_image("fake-digest")
    fake.image("hostile/blob-digest-mismatch", bad)
    layer_digest = json.loads(bad.manifest)["layers"][0]["digest"]
    real = bad.blobs[layer_digest]
    assert isinstance(real, bytes)
    fake.blob("hostile/blob-digest-mismatch", layer_digest, bytes(b ^ 0x55 for b in real))
    out["blob-digest-mismatch"] = Hostile("tree", ("digest mismatch", "gave up after 2 attempts"))
    return out


def test_hostile_registries_end_in_clear_errors_and_the_rest_completes(
        tmp_path: Path, registry: RunningRegistry) -> None:  # noqa: F811
    fake = FakeDistribution()
    with scenario("hostile/registries and images (real registry + stand-in)") as counts, \
            structlog.testing.capture_logs() as logs:
        try:
            hostile = {**{("real", n): h for n, h in _real_registry_hostiles(registry).items()},
                       **{("fake", n): h for n, h in _fake_registry_hostiles(fake).items()}}
            good = _own_image("good", config={"Cmd": ["/bin/true"]})
            push(registry.url, "hostile/good", "v1", good)
            b = ConfigBuilder()
            for key, value in FAST_RETRIES:
                b.item(key, value)
            real_ds, fake_ds = b.registry(registry.host), b.registry(fake.host)
            for (where, name), h in hostile.items():
                ct = b.content_tree(real_ds if where == "real" else fake_ds, f"hostile/{name}:v1", "", "container",
                                    max_size=h.max_size, name=f"tree-{name}")
                b.download_volume(ct, 8 * MiB, name=name)
            b.download_volume(b.content_tree(real_ds, "hostile/good:v1", "", "container", name="tree-good"),
                              8 * MiB, name="good")
            b.blank_volume(4 * MiB, name="blank")
            desired = parse_config(b.cfg)
            assert desired.errors == []
            data = tmp_path / "data"
            agent = Agent(data, AgentOptions(once=True))
            try:
                agent.set_desired(desired)
                with crash_counted(counts):
                    settle(agent, logs)
                    doc = check_agent_state(agent, desired, data)
            finally:
                agent.close()
        finally:
            fake.stop()
        assert not [e for e in logs if e.get("event") == "task crashed"]
        vols = {v["display_name"]: v for v in doc["volumes"]}
        trees = {t["display_name"]: t for t in doc["content_trees"]}
        wrong = []
        for (where, name), h in hostile.items():
            counts["hostile_images"] += 1
            vol, tree = vols[name], trees[f"tree-{name}"]
            failed = tree if h.where == "tree" else vol
            want_tree = "ERROR" if h.where == "tree" else "LOADED"
            desc = (failed["error"] or {}).get("description", "")
            if (vol["state"], vol["path"], tree["state"]) != ("ERROR", None, want_tree) or not all(
                    p in desc for p in h.phrases) or not vol["error"]["description"]:
                wrong.append(f"{name}: volume {vol['state']}, tree {tree['state']} (want {want_tree}), "
                             f"want {h.phrases} in: {desc}")
            counts[f"errors_{where}_registry"] += 1
        assert not wrong, "\n".join(wrong)
        assert vols["good"]["state"] == "CREATED_VOLUME"
        assert (Path(vols["good"]["path"]) / "rootfs/good/file").read_bytes() == b"goodgoodgood"
        assert vols["blank"]["state"] == "CREATED_VOLUME" and Path(vols["blank"]["path"]).is_file()
        counts["good_objects_completed"] = 2


# -- 2b: fuzzed tar headers --------------------------------------------------------------------

_LAYER_TYPES = {None: MEDIA_OCI_LAYER, "gzip": MEDIA_OCI_LAYER_GZIP, "zstd": MEDIA_OCI_LAYER_ZSTD}


def _snapshot(work: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``work`` except ``rootfs/``: type, mode, size, times, links, content."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(work):
        rel_dir = os.path.relpath(dirpath, work)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != "rootfs"]
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            extra: Any = None
            if stat.S_ISLNK(st_.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            out[os.path.normpath(os.path.join(rel_dir, name))] = (
                st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_nlink, st_.st_uid, st_.st_gid, extra)
    return out


@FUZZ_TIMEOUT
def test_fuzzed_tar_headers_never_write_outside_the_rootfs(tmp_path: Path) -> None:
    outside = ["/pwned", "/tmp/pwned", str(tmp_path / "pwned")]
    with scenario("hostile/fuzzed tar headers through unpack_layers") as counts:

        @FUZZ
        @given(hs.layer_stacks(), st.sampled_from([None, 0, 100, 10_000]),
               st.sampled_from([1_000_000, 1_000_000, 1_000_000, 3]), st.booleans(), st.booleans())
        def check(layers: list[hs.LayerPlan], max_bytes: int | None, max_entries: int, as_root: bool,
                  allow_devices: bool) -> None:
            work = Path(tempfile.mkdtemp(dir=tmp_path))
            blobs = Path(tempfile.mkdtemp(dir=tmp_path))
            (work / "rootfs").mkdir()
            sentinel = work / "sentinel"
            sentinel.mkdir()
            (sentinel / "secret").write_bytes(b"keep me")
            paths = []
            for i, layer in enumerate(layers):
                path = blobs / f"layer{i}"
                path.write_bytes(compress(hs.build_tar(layer, str(sentinel)), layer.compression))
                paths.append((path, _LAYER_TYPES[layer.compression], f"sha256:{i:064x}"))
            before = _snapshot(work)
            counts["inputs"] += 1
            counts["tar_members"] += sum(len(layer.members) for layer in layers)
            limits = UnpackLimits(max_bytes=max_bytes, allow_devices=allow_devices, max_entries=max_entries)
            with crash_counted(counts):
                try:
                    unpack_layers(work / "rootfs", paths, limits, state=UnpackState(as_root=as_root))
                    counts["unpacked"] += 1
                except UnpackError as exc:
                    assert str(exc).startswith("layer sha256:"), exc
                    counts["refused"] += 1
            assert _snapshot(work) == before, "something outside rootfs/ changed"
            for path in outside:
                assert not os.path.lexists(path), path
            shutil.rmtree(work)
            shutil.rmtree(blobs)

        check()
        assert counts["unpacked"] and counts["refused"]
