"""The registry client against a real docker-registry, fed by oci_image.push."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgevol.device.datastores import Cancelled, ConfigError, PermanentError, TransientError
from edgevol.device.datastores.oci_manifest import (
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_ZSTD,
    host_platform,
    layer_compression,
    parse_index,
    parse_manifest,
    select_platform,
)
from edgevol.device.datastores.oci_refs import ImageRef, parse_image_ref
from edgevol.device.datastores.registry import RegistryClient, parse_www_authenticate
from edgevol.tools.oci_image import Image, Index, Layer, build_image, build_index, make_tar, push
from tests.sinks import FileSink
from tests.registry_fixture import (  # noqa: F401  (fixtures)
    TEST_PASSWORD,
    TEST_USER,
    FaultProxy,
    RunningRegistry,
    TokenAuthRegistry,
    basic_auth_registry,
    fault_proxy,
    registry,
    token_auth_registry,
)

MiB = 1 << 20


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[FileSink]:
    s = FileSink(tmp_path / "blob")
    yield s
    s.close()


@dataclass
class Pushed:
    multi: Index  # demo/multi:v1, linux/amd64 + linux/arm64/v8
    single: Image  # demo/single:latest, Docker v2 media types
    big: Image  # demo/big:v1, one ~3 MiB uncompressed layer
    big_layer: Layer


@pytest.fixture(scope="module")
def pushed(registry: RunningRegistry) -> Pushed:
    amd64 = build_image(
        [
            Layer.from_files({"etc/": ("dir",), "etc/os-release": b"ID=edgevol\n"}),
            Layer.from_files({"app/run": (b"#!/bin/sh\necho amd64\n")}, compression="zstd"),
        ],
        {"Cmd": ["/app/run"]},
        arch="amd64",
    )
    arm64 = build_image(
        [Layer.from_files({"app/run": b"#!/bin/sh\necho arm64\n"})],
        {"Cmd": ["/app/run"]},
        arch="arm64",
        variant="v8",
    )
    multi = build_index({"linux/amd64": amd64, "linux/arm64/v8": arm64})
    push(registry.url, "demo/multi", "v1", multi)
    single = build_image([Layer.from_files({"hello": b"hi\n"}, flavor="docker")], {}, flavor="docker")
    push(registry.url, "demo/single", "latest", single)
    big_layer = Layer.from_files({"data.bin": os.urandom(3 * MiB + 4321)}, compression=None)
    big = build_image([big_layer], {})
    push(registry.url, "demo/big", "v1", big)
    return Pushed(multi, single, big, big_layer)


def client_for(host: str, **kwargs: object) -> RegistryClient:
    return RegistryClient(host, "http", **kwargs)  # type: ignore[arg-type]


def ref(host: str, url: str) -> ImageRef:
    return parse_image_ref(f"docker://{host}", "", url)


# -- resolve / manifests / platforms ----------------------------------------


def test_resolve_tag_to_pushed_index(registry: RunningRegistry, pushed: Pushed) -> None:
    r = ref(registry.host, "demo/multi:v1")
    with client_for(registry.host) as client:
        desc = client.resolve(r)
    assert desc.digest == pushed.multi.digest
    assert desc.media_type == MEDIA_OCI_INDEX
    assert desc.size == len(pushed.multi.manifest)


def test_bare_repository_means_latest_and_docker_types(registry: RunningRegistry, pushed: Pushed) -> None:
    r = ref(registry.host, "demo/single")
    assert r.tag == "latest"
    with client_for(registry.host) as client:
        desc = client.resolve(r)
        media_type, body = client.fetch_manifest(r.repository, desc.digest)
    assert (desc.digest, desc.media_type) == (pushed.single.digest, MEDIA_DOCKER_MANIFEST)
    assert media_type == MEDIA_DOCKER_MANIFEST and body == pushed.single.manifest
    _, layers = parse_manifest(body, media_type)
    assert [layer.media_type for layer in layers] == [MEDIA_DOCKER_LAYER_GZIP]
    assert layer_compression(layers[0].media_type) == "gzip"


def test_resolve_pinned_digest(registry: RunningRegistry, pushed: Pushed) -> None:
    r = ref(registry.host, f"demo/multi@{pushed.multi.digest}")
    with client_for(registry.host) as client:
        assert client.resolve(r).digest == pushed.multi.digest
        # A digest this repository does not hold: not found, whatever the tag says.
        other = ref(registry.host, f"demo/multi:v1@{pushed.big.digest}")
        with pytest.raises(PermanentError, match="not found"):
            client.resolve(other)


def test_select_platform_and_fetch_every_blob(registry: RunningRegistry, pushed: Pushed, tmp_path: Path) -> None:
    r = ref(registry.host, "demo/multi:v1")
    with client_for(registry.host) as client:
        desc = client.resolve(r)
        media_type, body = client.fetch_manifest(r.repository, desc.digest)
        entries = parse_index(body, media_type)
        assert sorted(e.platform for e in entries) == ["linux/amd64", "linux/arm64/v8"]
        chosen = select_platform(entries, arch="arm64")
        assert chosen.digest == pushed.multi.images[1].digest
        assert select_platform(entries, arch="arm64", variant="v8") == chosen
        m_type, m_body = client.fetch_manifest(r.repository, chosen.digest)
        config, layers = parse_manifest(m_body, m_type)
        fetched = {}
        for d in [config, *layers]:
            s = FileSink(tmp_path / d.digest.replace(":", "_"))
            client.fetch_blob(r.repository, d.digest, s, max_size=d.size)
            assert s.sha256() == d.digest and s.offset == d.size
            s.close()
            fetched[d.digest] = s.path.read_bytes()
    assert json.loads(fetched[config.digest])["architecture"] == "arm64"
    layer_tar = tarfile.open(fileobj=io.BytesIO(fetched[layers[0].digest]), mode="r:gz")
    assert layer_tar.extractfile("app/run").read() == b"#!/bin/sh\necho arm64\n"  # type: ignore[union-attr]


def test_select_platform_refuses_clearly() -> None:
    image = build_image([Layer.from_files({"a": b"1"})], {})
    index = build_index({"linux/amd64": image, "linux/arm/v7": image})
    entries = parse_index(index.manifest)
    with pytest.raises(PermanentError, match=r"linux/riscv64.*available: linux/amd64, linux/arm/v7"):
        select_platform(entries, arch="riscv64")
    with pytest.raises(PermanentError, match="linux/arm/v6"):
        select_platform(entries, arch="arm", variant="v6")
    assert select_platform(entries, arch="arm", variant="v7").digest == image.digest


@pytest.mark.parametrize(
    ("machine", "expected"),
    [("x86_64", ("linux", "amd64", None)), ("aarch64", ("linux", "arm64", None)), ("armv7l", ("linux", "arm", "v7"))],
)
def test_host_platform_uses_go_arch_names(machine: str, expected: tuple[str, str, str | None]) -> None:
    assert host_platform(machine) == expected


def test_resolve_without_digest_header_hashes_the_manifest(
    fault_proxy: FaultProxy, registry: RunningRegistry, pushed: Pushed
) -> None:
    fault_proxy.strip_headers = {"docker-content-digest"}
    with client_for(fault_proxy.host) as client:
        desc = client.resolve(ref(fault_proxy.host, "demo/multi:v1"))
    assert (desc.digest, desc.media_type) == (pushed.multi.digest, MEDIA_OCI_INDEX)
    methods = [r.method for r in registry.requests() if r.path == "/v2/demo/multi/manifests/v1"]
    assert methods[-2:] == ["HEAD", "GET"]


def test_tampered_manifest_is_refused(fault_proxy: FaultProxy, pushed: Pushed) -> None:
    fault_proxy.tamper_manifests = True
    with client_for(fault_proxy.host) as client:
        with pytest.raises(PermanentError, match=f"expected {pushed.multi.digest}"):
            client.fetch_manifest("demo/multi", pushed.multi.digest)


def test_unknown_tag_repository_and_blob_are_permanent(registry: RunningRegistry, pushed: Pushed, sink: FileSink) -> None:
    with client_for(registry.host) as client:
        with pytest.raises(PermanentError, match="not found") as info:
            client.resolve(ref(registry.host, "demo/multi:no-such-tag"))
        assert not isinstance(info.value, TransientError)
        with pytest.raises(PermanentError, match="not found"):
            client.resolve(ref(registry.host, "demo/nothing-here:v1"))
        missing = "sha256:" + "0" * 64
        with pytest.raises(PermanentError, match="BLOB_UNKNOWN"):
            client.fetch_blob("demo/multi", missing, sink)
    assert sink.offset == 0


# -- blob transfer: resume, caps, redirects, cancel ---------------------------


def test_blob_resumes_with_range_after_dropped_connection(
    fault_proxy: FaultProxy, registry: RunningRegistry, pushed: Pushed, sink: FileSink
) -> None:
    layer = pushed.big_layer
    cut = MiB + 12345
    fault_proxy.drop_blob_after = cut
    with client_for(fault_proxy.host) as client:
        with pytest.raises(TransientError):
            client.fetch_blob("demo/big", layer.digest, sink, max_size=layer.size)
        assert fault_proxy.drops == 1
        assert 0 < sink.offset <= cut
        held = sink.offset
        client.fetch_blob("demo/big", layer.digest, sink, max_size=layer.size)
    assert sink.sha256() == layer.digest and sink.resets == 0
    gets = registry.blob_gets(layer.digest)
    # The second request asked for the rest only: the registry served a 206 of that size.
    assert gets[-1].status == 206 and gets[-1].size == layer.size - held


def test_blob_larger_than_max_size_is_refused(registry: RunningRegistry, pushed: Pushed, sink: FileSink) -> None:
    layer = pushed.big_layer
    with client_for(registry.host) as client:
        with pytest.raises(PermanentError, match="maxSizeBytes"):
            client.fetch_blob("demo/big", layer.digest, sink, max_size=layer.size - 1)
    assert sink.offset == 0


def test_cancel_before_transfer(registry: RunningRegistry, pushed: Pushed, sink: FileSink) -> None:
    cancel = threading.Event()
    cancel.set()
    with client_for(registry.host) as client:
        with pytest.raises(Cancelled):
            client.fetch_blob("demo/big", pushed.big_layer.digest, sink, cancel=cancel)
    assert sink.offset == 0


def test_blob_redirect_to_other_host_gets_no_credentials(
    fault_proxy: FaultProxy, pushed: Pushed, sink: FileSink
) -> None:
    fault_proxy.require_basic = ("alice", "wonder-land-pw")
    fault_proxy.redirect_blobs = True
    digest = json.loads(pushed.single.manifest)["layers"][0]["digest"]
    with client_for(fault_proxy.host, api_key="alice", password="wonder-land-pw") as client:
        client.fetch_blob("demo/single", digest, sink)
    assert sink.sha256() == digest
    assert len(fault_proxy.redirected) == 1
    assert "Authorization" not in fault_proxy.redirected[0]
    # ...while the registry host itself did get them (after its 401 challenge).
    assert any("Authorization" in h for _, path, h in fault_proxy.seen if not path.startswith("/_redirected"))


# -- authentication ---------------------------------------------------------


def test_basic_auth_registry(basic_auth_registry: RunningRegistry, sink: FileSink) -> None:
    reg = basic_auth_registry
    image = build_image([Layer.from_files({"secret": b"classified\n"})], {})
    push(reg.url, "private/app", "v1", image, api_key=TEST_USER, password=TEST_PASSWORD)
    r = ref(reg.host, "private/app:v1")
    with client_for(reg.host, api_key=TEST_USER, password=TEST_PASSWORD) as client:
        assert client.resolve(r).digest == image.digest
        layer_digest = json.loads(image.manifest)["layers"][0]["digest"]
        client.fetch_blob(r.repository, layer_digest, sink)
    assert sink.sha256() == layer_digest
    with client_for(reg.host) as anonymous:
        with pytest.raises(PermanentError, match="requires credentials"):
            anonymous.resolve(r)
    with client_for(reg.host, api_key=TEST_USER, password="wrong-password-xyz") as wrong:
        with pytest.raises(PermanentError, match="authentication failed") as info:
            wrong.resolve(r)
    assert "wrong-password-xyz" not in str(info.value)


def test_token_auth_registry(token_auth_registry: TokenAuthRegistry, sink: FileSink) -> None:
    reg, tokens = token_auth_registry.registry, token_auth_registry.token_server
    image = build_image([Layer.from_files({"tok": b"bearer\n"})], {})
    with pytest.raises(PermanentError, match="authentication failed"):
        push(reg.url, "team/app", "v1", image)  # anonymous tokens grant nothing here
    push(reg.url, "team/app", "v1", image, api_key=TEST_USER, password=TEST_PASSWORD)
    r = ref(reg.host, "team/app:v1")
    before = len(tokens.issued)
    with client_for(reg.host, api_key=TEST_USER, password=TEST_PASSWORD) as client:
        desc = client.resolve(r)
        client.fetch_manifest(r.repository, desc.digest)
        layer_digest = json.loads(image.manifest)["layers"][0]["digest"]
        client.fetch_blob(r.repository, layer_digest, sink)
    assert desc.digest == image.digest and sink.sha256() == layer_digest
    # One token for the pull scope, reused for the manifest and the blob.
    assert tokens.issued[before:] == [(TEST_USER, ["repository:team/app:pull"])]
    with client_for(reg.host) as anonymous:
        with pytest.raises(PermanentError, match="authentication failed.*requires credentials"):
            anonymous.resolve(r)
    with client_for(reg.host, api_key=TEST_USER, password="not-the-password") as wrong:
        with pytest.raises(PermanentError, match="token service.*rejected") as info:
            wrong.resolve(r)
    assert "not-the-password" not in str(info.value)


def test_parse_www_authenticate() -> None:
    challenges = parse_www_authenticate(
        [
            'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
            'scope="repository:a/b:pull,push"',
            'Basic realm="x, y", Bearer realm=https://other/token',
        ]
    )
    assert [(c.scheme, dict(c.params)) for c in challenges] == [
        (
            "bearer",
            {
                "realm": "https://auth.example.com/token",
                "service": "registry.example.com",
                "scope": "repository:a/b:pull,push",
            },
        ),
        ("basic", {"realm": "x, y"}),
        ("bearer", {"realm": "https://other/token"}),
    ]


# -- references -------------------------------------------------------------


def test_refs_plain_http_only_for_loopback() -> None:
    assert parse_image_ref("docker://127.0.0.1:5000", "", "a/b:1").scheme == "http"
    assert parse_image_ref("oci://localhost:5000", "", "a/b:1").scheme == "http"
    assert parse_image_ref("[::1]:5000", "", "a/b:1").base_url == "http://[::1]:5000"
    remote = parse_image_ref("docker://registry.example.com", "team", "app@sha256:" + "a" * 64)
    assert (remote.scheme, remote.registry_host, remote.repository) == ("https", "registry.example.com", "team/app")
    assert remote.reference == "sha256:" + "a" * 64 and remote.tag is None
    with pytest.raises(ConfigError, match="loopback"):
        parse_image_ref("http://registry.example.com", "", "a:1")
    with pytest.raises(ConfigError, match="loopback"):
        RegistryClient("registry.example.com", "http")


def test_refs_docker_hub_and_pasted_host() -> None:
    hub = parse_image_ref("docker://docker.io", "", "alpine:3.20")
    assert (hub.registry_host, hub.repository, hub.tag) == ("registry-1.docker.io", "library/alpine", "3.20")
    pasted = parse_image_ref("docker://127.0.0.1:5000", "", "127.0.0.1:5000/demo/app:v2")
    assert (pasted.repository, pasted.tag) == ("demo/app", "v2")


@pytest.mark.parametrize(
    ("fqdn", "url", "message"),
    [
        ("docker://r.example", "Demo/App:v1", "invalid repository name"),
        ("docker://r.example", "demo/app:-bad", "invalid tag"),
        ("docker://r.example", "demo/app:" + "t" * 129, "invalid tag"),
        ("docker://r.example", "demo//app:v1", "invalid repository name"),
        ("docker://r.example", "demo/../app:v1", "invalid repository name"),
        ("docker://r.example", "demo/app@sha512:" + "a" * 128, "only sha256"),
        ("docker://r.example", "demo/app@sha256:ABC", "invalid digest"),
        ("docker://r.example", "", "empty URL"),
        ("ftp://r.example", "a:1", "unsupported scheme"),
        ("docker://user:pw@r.example", "a:1", "credentials"),
    ],
)
def test_refs_refused(fqdn: str, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_image_ref(fqdn, "", url)
    assert "pw@" not in str(info.value)


# -- manifest validation and image building ---------------------------------


def _manifest_with(layer: dict[str, object]) -> bytes:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "1" * 64, "size": 2}
    return json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode()


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            {"mediaType": MEDIA_OCI_LAYER, "digest": "sha256:" + "2" * 64, "size": 1, "urls": ["https://x/y"]},
            "external URLs",
        ),
        (
            {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar", "digest": "sha256:" + "2" * 64, "size": 1},
            "non-distributable",
        ),
        ({"mediaType": "application/vnd.example.wasm", "digest": "sha256:" + "2" * 64, "size": 1}, "unsupported media type"),
        ({"mediaType": MEDIA_OCI_LAYER, "digest": "md5:abc", "size": 1}, "invalid digest"),
        ({"mediaType": MEDIA_OCI_LAYER, "digest": "sha256:" + "2" * 64, "size": -1}, "invalid size"),
    ],
)
def test_parse_manifest_refuses(layer: dict[str, object], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        parse_manifest(_manifest_with(layer))


def test_parse_manifest_refuses_schema1_and_index() -> None:
    with pytest.raises(PermanentError, match="schema 1"):
        parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}')
    index = build_index({"linux/amd64": build_image([], {})})
    with pytest.raises(PermanentError, match="index"):
        parse_manifest(index.manifest)


def test_layers_are_deterministic_and_exact() -> None:
    files = {
        "etc/": ("dir",),
        "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
        "bin/sh": ("symlink", "busybox"),
        "bin/ash": ("hardlink", "/bin/busybox"),
        "var/gone": ("whiteout",),
        "opt": ("opaque",),
        "run/tool": ("file", b"#!", 0o4755),
    }
    a = Layer.from_files(files)
    assert a == Layer.from_files(files)  # same bytes, same digest
    tar = tarfile.open(fileobj=io.BytesIO(make_tar(files)))
    members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["etc", "etc/passwd", "bin/sh", "bin/ash", "var/.wh.gone", "opt/.wh..wh..opq", "run/tool"]
    assert members["bin/ash"].islnk() and members["bin/ash"].linkname == "bin/busybox"
    assert members["run/tool"].mode == 0o4755 and members["etc/passwd"].mtime == 0
    zstd = Layer.from_files(files, compression="zstd")
    assert zstd.media_type == MEDIA_OCI_LAYER_ZSTD and zstd.diff_id == a.diff_id
