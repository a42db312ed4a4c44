"""BLOB_TREE: a content tree that is an OCI artifact of plain files becomes a directory volume of them.

The seed names "blob trees" beside disk images and containers; eve-api has no Format for one, so
edgevol uses Format 1000 (edgevol.api.formats). The artifact is an OCI image manifest whose blobs
carry ``org.opencontainers.image.title`` (the file name, as ``oras push`` sets it). It comes from a
real registry (Debian's docker-registry) or from an OCI image layout on a real HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from edgevol.api.formats import BLOB_TREE
from edgevol.device.datastores.oci_manifest import MEDIA_OCI_MANIFEST
from edgevol.tools.oci_image import Image, push, sha256_digest
from tests.configs import ConfigBuilder
from tests.conftest import EDGEVOL, by_name, device_status
from tests.controller_fixture import controller_factory  # noqa: F401
from tests.registry_fixture import RunningRegistry, registry  # noqa: F401  (fixture)
from tests.test_cli_admin import ok

MiB = 1 << 20
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def artifact(files: dict[str, bytes], titles: dict[str, str] | None = None) -> Image:
    """An OCI artifact manifest listing ``files`` (title -> bytes); ``titles`` overrides a file's title."""
    layers = [{"mediaType": "application/octet-stream", "digest": sha256_digest(data), "size": len(data),
               "annotations": {"org.opencontainers.image.title": (titles or {}).get(name, name)}}
              for name, data in files.items()]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                           "artifactType": "application/vnd.edgevol.test.files",
                           "config": {"mediaType": EMPTY_TYPE, "digest": sha256_digest(EMPTY), "size": 2},
                           "layers": layers}).encode()
    blobs = {sha256_digest(EMPTY): EMPTY, **{sha256_digest(d): d for d in files.values()}}
    return Image(manifest, MEDIA_OCI_MANIFEST, blobs)


def write_layout(root: Path, image: Image) -> str:
    """An OCI image layout holding ``image`` (as ``oras copy --to-oci-layout`` writes one); its manifest's hex."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for digest, data in {**image.blobs, image.digest: image.manifest}.items():
        (blobs / digest.removeprefix("sha256:")).write_bytes(data if isinstance(data, bytes) else data.read_bytes())
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return image.digest.removeprefix("sha256:")


def blob_tree(b: ConfigBuilder, ds: str, url: str, name: str, sha256: str = "") -> str:
    ct = b.content_tree(ds, url, sha256, "raw", name=name)
    b.cfg.contentInfo[-1].iformat = BLOB_TREE  # type: ignore[assignment]
    b.download_volume(ct, 0, name=f"vol-{name}")
    return ct


def run_once(data: Path, b: ConfigBuilder, cfg: Path) -> subprocess.CompletedProcess[str]:
    b.save(cfg)
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=120)


def tree_files(volume: Path) -> dict[str, bytes]:
    root = volume / "rootfs"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_artifact_from_a_registry_or_an_http_layout_becomes_a_directory_of_its_files(
        tmp_path, datastore_dir, http_server, registry: RunningRegistry) -> None:  # noqa: F811
    files = {"model.bin": os.urandom(MiB + 7), "conf/settings.json": b'{"threshold": 0.7}\n', "README": b"hi\n"}
    image = artifact(files)
    push(registry.url, "edge/models", "v1", image)
    manifest_hex = write_layout(datastore_dir / "models", image)
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    web = b.datastore(http_server.url)
    blob_tree(b, reg, "edge/models:v1", "from-registry")
    blob_tree(b, web, "models", "from-http", manifest_hex)
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    for name in ("from-registry", "from-http"):
        assert by_name(st["content_trees"], name)["state"] == "LOADED"
        vol = by_name(st["volumes"], f"vol-{name}")
        assert vol["state"] == "CREATED_VOLUME"
        assert tree_files(Path(vol["path"])) == files  # every file, by its title, byte for byte
    # every blob verified and stored once in the CAS, shared by both trees
    cas = {p.name for p in (data / "cas" / "blobs" / "sha256").iterdir()}
    assert {sha256_digest(d).removeprefix("sha256:") for d in files.values()} <= cas
    assert len({bl["sha256"] for bl in st["blobs"]}) == len(st["blobs"]) == len(files) + 2  # + config, manifest
    for data_bytes in files.values():
        assert len(registry.blob_gets(sha256_digest(data_bytes))) <= 1


def test_an_artifact_naming_a_file_outside_its_volume_is_refused(tmp_path, registry: RunningRegistry) -> None:  # noqa: F811
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    for n, title in enumerate(("../escape", "/etc/passwd", "a/./b", "")):
        push(registry.url, "edge/bad", f"v{n}", artifact({"x": f"payload {n}".encode()}, {"x": title}))
        blob_tree(b, reg, f"edge/bad:v{n}", f"bad{n}")
    push(registry.url, "edge/bad", "dup", artifact({"a": b"1", "b": b"2"}, {"a": "same", "b": "same"}))
    blob_tree(b, reg, "edge/bad:dup", "dup")
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    assert run_once(data, b, cfg).returncode == 1
    st = device_status(data)
    for name in ("bad0", "bad1", "bad2", "bad3", "dup"):
        tree = by_name(st["content_trees"], name)
        assert tree["state"] == "ERROR", tree
        assert "file name" in tree["error"]["description"] or "annotation" in tree["error"]["description"]
        assert by_name(st["volumes"], f"vol-{name}")["path"] is None
    assert not (data.parent / "escape").exists() and not (data / "escape").exists()


def test_the_controller_takes_blob_tree_content(controller_factory, registry: RunningRegistry) -> None:  # noqa: F811
    ctrl = controller_factory(None)
    ok(ctrl, "device", "create", "dev1", "--serial", "SN1")
    ok(ctrl, "datastore", "create", "reg", "--type", "DsContainerRegistry", "--fqdn", f"docker://{registry.host}")
    made = ok(ctrl, "content-tree", "create", "models", "--device", "dev1", "--datastore", "reg", "--url",
              "edge/models:v1", "--format", "BLOB_TREE", "-o", "json")
    assert (made["format"], made["format_name"]) == (BLOB_TREE, "BLOB_TREE")
